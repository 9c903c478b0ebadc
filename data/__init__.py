"""The token cache format (HDF5 shards + Parquet manifest) and the synthetic corpus."""
