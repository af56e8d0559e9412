"""The data of the Hopfield DEQs: dataset names, files, the IDX reader, the device-resident
loader, the generated ``synthetic`` set and the LightningDataModule.

    names.py       the datasets and their sizes (no torch)
    batches.py     batches and samples per device of a split (no torch)
    idx.py         the IDX file reader
    files.py       finding, downloading, checking and reading the files of each dataset
    synthetic.py   the generated ``synthetic`` set
    loader.py      batches served from a dataset kept on the training device
    datamodule.py  :class:`HopfieldDataModule`

Importing the package is cheap: the names below load their module on first use, so
``from deq_modules.data import DATASETS`` needs neither torch nor Lightning.
"""
from ..lazy import lazy_exports

_LAZY = {
    "DATASETS": "names", "NUM_CLASSES": "names", "SPLIT_IMAGES": "names",
    "check_dataset_name": "names",
    "batches_per_device": "batches", "samples_per_device": "batches",
    "IdxError": "idx", "read_idx": "idx",
    "DatasetCorruptError": "files", "DatasetNotFoundError": "files", "check_dataset": "files",
    "load_dataset": "files",
    "make_synthetic": "synthetic", "synthetic_options": "synthetic",
    "DeviceBatchLoader": "loader",
    "HopfieldDataModule": "datamodule",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
