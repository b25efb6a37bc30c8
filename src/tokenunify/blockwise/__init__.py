"""Blockwise post-processing and prediction on daisy 2.0: one small task per stage."""
