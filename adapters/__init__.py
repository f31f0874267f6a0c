"""One module per kind of upstream system. Nothing here imports the rest of Huren."""
