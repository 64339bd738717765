"""Models wing: timm backbones and their weights (`factory`), heads (`heads`: ML-Decoder, CSRA),
multi-view study fusion (`fusion`), checkpoints that rebuild their model (`checkpoint`), the forward
pass with TTA shared by validation and prediction (`inference`). Imports only ground."""
