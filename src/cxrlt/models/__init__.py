"""Models wing: timm backbones and their weights (`factory`), atomic checkpoints (`checkpoint`), the
forward pass with TTA shared by validation and prediction (`inference`). Imports only ground."""
