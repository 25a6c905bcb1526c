__all__ = ['ttypes', 'constants', 'ShardHolder', 'ComputeNode', 'Coordinator']
