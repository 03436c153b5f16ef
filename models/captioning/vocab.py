"""The special tokens of a captioning vocabulary (the CS231n COCO captioning data's): padding, the
start and the end of a caption.

A leaf module, so that the model (``captioning_rnn``), decoding (``decoding``, ``search``) and
explaining captions (``explain``) share them without importing one another.
"""

NULL, START, END = "<NULL>", "<START>", "<END>"
