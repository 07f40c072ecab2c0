"""The small synthetic paired tables the table-trainer tests share (3 MOAs x 6 compounds x 3 replicates, 4 assays)
and their small-network configuration."""
from phenovec.train.tables.synthetic import synthetic_config, write_synthetic_tables

DATA = {"n_moa": 3, "compounds_per_moa": 6, "replicates": 3, "cp_dim": 12, "tx_dim": 16}


def write_small_tables(folder):
    return write_synthetic_tables(folder, n_tasks=4, **DATA)


def small_config(tables, task, out, epochs, **model):
    return synthetic_config(tables, task, out, epochs=epochs, batch_size=8, width=16, embed_dim=8, proj_dim=4,
                            dropout=0.1, **model)
