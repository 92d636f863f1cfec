"""Plotting (figures over the H&E)."""
