"""BioNIC's protocol on an image folder: 10 % global holdout, 5 folds × 4 repeats, batch 8, Adam, 224 px.

  python -m jaxcell.main --config configs/bionic.py:root=/data/CHO_images --workdir runs/cho
  python -m jaxcell.main --config configs/bionic.py:root=/data/x,model=Vgg_all,weights=w/vgg16.npz --workdir runs/x
  python -m jaxcell.main --config configs/bionic.py:root=/data/x,model=cnn_all,epochs=30,lr=0.01 --workdir runs/x

Arguments after ':' (comma separated):
  root=PATH     image folder, root/<class>/<image> (or root/{train,test,holdout}/<class>/<image>)
  model=NAME    a jaxcell model (resnet18, vgg16, cnn_all, cnn_flat, ...) trained end to end, or one of BioNIC's
                transfer set-ups: ResNet_all, ResNet_lower (resnet18), Vgg_all, Vgg_lower (vgg16)
  weights=PATH  converted ImageNet weights for the model (python -m jaxcell.convert); none = from scratch
  epochs=N      BioNIC epochs (8 by default at HEAD; 15-30 in the published runs)
  lr=X          Adam learning rate (BioNIC: 1e-3 on most datasets)
  size=N        input size (BioNIC: 224)
  smoke         shrink everything for a seconds-long check
"""

from jaxcell import config as config_lib

# BioNIC's model names -> (jaxcell model, transfer preset).
BIONIC_MODELS = {
  "ResNet_all": ("resnet18", "resnet_all"),
  "ResNet_lower": ("resnet18", "resnet_lower"),
  "Vgg_all": ("vgg16", "vgg_all"),
  "Vgg_lower": ("vgg16", "vgg_lower"),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, root="", model="resnet18", weights="", epochs=8, lr=1e-3, size=224, smoke=False)
  c = config_lib.base_config()
  c.data.source = "folder"
  c.data.root = arg.root
  c.data.image_size = arg.size
  c.data.normalization = "dataset"  # BioNIC's per-dataset statistics.
  c.model.name, c.transfer.preset = BIONIC_MODELS.get(arg.model, (arg.model, ""))
  c.model.head = "bionic_mlp"  # Linear-ReLU-BatchNorm-Linear, as BioNIC's heads.
  c.transfer.weights = arg.weights
  c.train.num_epochs = arg.epochs
  c.train.learning_rate = arg.lr
  c.train.batch_size = 8
  c.augment.rotation_degrees = 90.0  # RandomRotation(90) + horizontal and vertical flips.
  if arg.smoke:
    config_lib.shrink_for_smoke(c)
  return c
