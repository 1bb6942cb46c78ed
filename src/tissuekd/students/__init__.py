"""Students: H&E-only models trained from a frozen teacher."""
