"""``python -m edged_train``: the command line of ``tools/train_emotion.py``."""

from edged_train.cli import main

main()
