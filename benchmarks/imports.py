"""Import time: ``import ctvol`` must stay cheap (heavy dependencies load lazily)."""


def timeraw_import_ctvol():
    # timeraw: asv runs the returned code in a fresh interpreter per sample.
    return "import ctvol"
