"""Workers: child-network builders, datasets, the trainer and Ray scheduling.

Filled by the training and worker issues; algorithm code here never imports grpc.
"""
