"""GeoCLIP's pretrained files, shipped in the ``geoclip==1.3.0`` wheel (MIT licence).

Registered here without importing torch or the ``geoclip`` package (whose
``__init__`` pulls torchvision); the files are found through
``importlib.metadata``.
"""

from __future__ import annotations

from geolocus.weights import WeightsInfo, package_file, register_weights, user_weights

GEOCLIP_DIST = "geoclip"

LOCATION_ENCODER = "geoclip-location-encoder"
IMAGE_HEAD = "geoclip-image-head"
LOGIT_SCALE = "geoclip-logit-scale"
GPS_GALLERY = "geoclip-gps-gallery-100k"


def _locator(name: str, relpath: str):
    return lambda: user_weights(name) or package_file(GEOCLIP_DIST, relpath)


for _name, _kind, _rel, _desc in (
    (
        LOCATION_ENCODER,
        "location-encoder",
        "geoclip/model/weights/location_encoder_weights.pth",
        "GeoCLIP location encoder: Equal Earth + RFF (σ=1,16,256) + 3 MLPs, 512-d",
    ),
    (
        IMAGE_HEAD,
        "head",
        "geoclip/model/weights/image_encoder_mlp_weights.pth",
        "GeoCLIP image head: MLP 768→768→512 over CLIP ViT-L/14 projected features",
    ),
    (
        LOGIT_SCALE,
        "head",
        "geoclip/model/weights/logit_scale_weights.pth",
        "GeoCLIP learned logit scale (log; exp ≈ 39.7)",
    ),
    (
        GPS_GALLERY,
        "gallery",
        "geoclip/model/gps_gallery/coordinates_100K.csv",
        "GeoCLIP's GPS gallery: 100,000 coordinates (LAT,LON) to retrieve from",
    ),
):
    register_weights(
        WeightsInfo(
            name=_name,
            kind=_kind,
            source=f"pypi:{GEOCLIP_DIST}",
            description=_desc,
            license="MIT",
            locate=_locator(_name, _rel),
        )
    )
