"""Model maths for the cluster: the Cython MLP, FedAvg, checkpoints (never thrift).

Import the submodules directly (`from mlcore.model import train`); this package stays light.
"""
