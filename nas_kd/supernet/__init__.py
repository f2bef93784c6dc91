"""Weight-sharing supernet: train once, rank many members by inherited weights."""
