"""The deploy package: predict.py (standalone, copied into models/export/) and the files export writes beside it."""
