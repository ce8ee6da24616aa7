"""BioNIC's protocol and experiment catalogue on an image folder, a tensorflow-datasets name or the demo cells:
10 % global holdout, 5 folds x 4 repeats, batch 8, Adam, 224 px, per-dataset normalisation.

  python -m jaxcell.main --config configs/bionic.py:root=/data/CHO_images,dataset=CHO_images --workdir runs/cho
  python -m jaxcell.main --config configs/bionic.py:tfds=malaria --workdir runs/malaria
  python -m jaxcell.main --config configs/bionic.py:root=/data/x,experiment=blog1,resnet18_weights=r.npz,vgg16_weights=v.npz --workdir runs/x
  python -m jaxcell.main --config configs/bionic.py:root=/data/x,experiment=preprocess,dataset=CHO_images --workdir runs/x
  python -m jaxcell.main --config configs/bionic.py:root=/data/x,model=cnn_all,epochs=30,lr=0.01 --workdir runs/x

Arguments after ':' (comma separated):
  root=PATH         image folder, root/<class>/<image> (or root/{train,test,holdout}/<class>/<image>)
  tfds=NAME         or a tensorflow-datasets name (malaria, colorectal_histology, patch_camelyon, ...), prepared
                    with `tfds build NAME`; tfds_split=SPLIT ('train', 'train[:2000]'), tfds_data_dir=DIR
                    (neither root nor tfds: the embedded demo cells)
  dataset=NAME      one of BioNIC's datasets (jaxcell/bionic.py DATASETS, e.g. CHO_images, blood_WBC): its epochs,
                    learning rate, baseline model, threshold cutoff and max images per class (tfds=malaria implies
                    malaria_cell_images)
  experiment=NAME   main (one model, default), blog1 (BioNIC's six transfer set-ups), preprocess (its pre-processing
                    study), augment (an augmentation study), image_size (its blog3: resize vs centre crop vs a
                    larger input of large_size=N px, default 2 x size), cellnet (ResNet_all and ResNet_lower
                    from ImageNet, resnet18_weights=, and from a CellNet, cellnet=DIR of python -m jaxcell.pretrain)
  model=NAME        a jaxcell model (resnet18, vgg16, cnn_all, cnn_flat, ...) trained end to end, or one of BioNIC's
                    set-ups: ResNet_all, ResNet_lower (resnet18), Vgg_all, Vgg_lower (vgg16), CNN_all, CNN_flat
  weights=PATH      converted ImageNet weights for the model (python -m jaxcell.convert); none = from scratch
  resnet18_weights=PATH, vgg16_weights=PATH   the same per family, for experiment=blog1 (and cellnet)
  cellnet=DIR       a finished CellNet pretraining workdir (configs/cellnet.py:width=1.0), for experiment=cellnet
  epochs=N          BioNIC epochs (default: the dataset's, else 8, BioNIC's driver default)
  lr=X              Adam learning rate (default: the dataset's, else 1e-3)
  size=N            input size (BioNIC: 224)
  smoke             shrink everything for a seconds-long check
"""

from jaxcell import bionic


def get_config(arg=None):
  return bionic.experiment_config(arg)
