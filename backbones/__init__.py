"""One registry of face backbones: ``get_model(name, **kwargs)``, each with its declared ``InputSpec``.

Every backbone takes a batch normalised as its spec says (``model.input_spec.normalise``) and returns
the embedding.  Constructor keywords are consistent: ``num_features`` (embedding size) and, where it
applies, ``dropout``.  A new backbone is one file plus one line in ``_REGISTRY``.  Checkpoint loading
(``load_float_model``) and converters from other formats (``backbones.tflite``) live here too.
"""
from backbones.loading import load_float_model
from backbones.registry import available_models, get_model, input_spec
from backbones.spec import InputSpec, input_spec_of

__all__ = ["InputSpec", "available_models", "get_model", "input_spec", "input_spec_of", "load_float_model"]
