"""Response media types cached per output type: the same answer as BentoML's, worked out once."""
from __future__ import annotations

import numpy as np
import pytest
from _bentoml_sdk.io_models import IOMixin, IORootModel

import serving.media_types as media_types
from serving.service import ImageClassifier, Model

OUTPUTS = [(svc, name) for svc in (Model, ImageClassifier) for name in svc.apis]


@pytest.mark.parametrize("svc, api", OUTPUTS, ids=[f"{s.name}.{a}" for s, a in OUTPUTS])
def test_same_media_type_as_bentoml(svc, api):
    spec = svc.apis[api].output_spec
    assert spec.mime_type() == media_types._mime_type(spec) == "application/json"


def test_the_schema_is_built_once_per_type():
    built = []

    class Frames(IORootModel):
        root: np.ndarray

        @classmethod
        def model_json_schema(cls, *args, **kwargs):
            built.append(cls)
            return {"type": "array"}

    media_types.cache_per_type()
    assert hasattr(IOMixin.mime_type, "cache_info")
    assert [Frames.mime_type() for _ in range(5)] == ["application/json"] * 5
    assert built == [Frames]
