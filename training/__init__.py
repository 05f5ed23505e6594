"""fakelens.training: fine-tune timm backbones into real-vs-synthetic detectors, then evaluate and calibrate."""
