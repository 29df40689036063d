def pretrain_command():
    """placeholder"""
