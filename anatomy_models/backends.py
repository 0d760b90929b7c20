"""Which module holds each backend. `base.create` imports only the module it needs, so a classical
run never pays for importing torch; a new backend is one line here plus its own file."""

BACKEND_MODULES: dict[str, dict[str, str]] = {
    "anatomy": {
        "classical": "anatomy_models.classical_anatomy",
        "cxas": "anatomy_models.cxas",
        "pspnet": "anatomy_models.pspnet",
    },
    "lesion_prior": {
        "classical": "anatomy_models.classical_prior",
        "xrv": "anatomy_models.xrv_prior",
    },
    "refiner": {
        "classical": "anatomy_models.classical_refiner",
        "sam": "anatomy_models.sam_refiner",
    },
}
