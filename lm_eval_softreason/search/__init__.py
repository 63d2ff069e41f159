"""Search strategies over the soft first-token embedding (the BO loop, baselines, the GP step)."""
