"""`tokenunify study`: scratch vs MAE vs autoregressive vs TokenUnify, as one resumable command."""
