# Placeholder: the MLP kernels arrive with the mlcore work.
def version():
    return 0
