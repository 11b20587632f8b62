"""The Open Inference Protocol (KServe V2 / Triton HTTP) as bytes in, tensors out and back: no HTTP, no model.

A request body is a JSON header, optionally followed by raw tensors (the binary tensor data extension): the header's
length is then in the `Inference-Header-Content-Length` HTTP header and each binary input says its size in
`parameters.binary_data_size`. BYTES elements travel as a 4-byte little-endian length, then the bytes. Outputs are
returned the same way when the client asks (`binary_data` on an output, `binary_data_output` on the request).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from contract.errors import RequestError

HEADER_LENGTH = "inference-header-content-length"
IMAGE_FILES, PIXELS = "image", "images"  # encoded files (BYTES) | preprocessed uint8 pixels (UINT8 [N,S,S,3])
PROBABILITIES, LABELS = "probabilities", "labels"
# optional: Grad-CAM maps of the top classes (FP32 [N, k, h, w], training.cam) and the classes they map (BYTES [N, k])
HEATMAPS, HEATMAP_LABELS = "heatmaps", "heatmap_labels"
OUTPUTS = (PROBABILITIES, LABELS, HEATMAPS, HEATMAP_LABELS)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Loose):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Loose):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Loose):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass
class Request:
    """One parsed inference request: either files (encoded images) or pixels (uint8 [N,S,S,3])."""
    id: str | None
    files: list[bytes] | None
    pixels: np.ndarray | None
    outputs: list[RequestOutput]
    parameters: dict[str, Any] = field(default_factory=dict)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail). Without the header-length HTTP header the whole body is JSON."""
    if header_length is None:
        return body, b""
    if not re.fullmatch(r"[0-9]{1,15}", header_length.strip()):  # ASCII digits: '²'.isdigit() is true too
        raise RequestError("bad_header_length", f"Inference-Header-Content-Length must be a byte count, "
                            f"got {header_length[:40]!r}")
    n = int(header_length)
    if n > len(body):
        raise RequestError("bad_header_length", f"Inference-Header-Content-Length is {n} but the body has only "
                            f"{len(body)} bytes")
    return body[:n], body[n:]


def parse_header(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise RequestError("bad_json", "the request (or its JSON header) is not valid JSON") from None
        raise RequestError("bad_request", f"not an inference request: {_validation_message(exc)}") from None


def _binary_sizes(inputs: list[RequestInput]) -> list[int | None]:
    sizes = []
    for item in inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise RequestError("bad_binary_size", f"input '{item.name}': binary_data_size must be a byte count")
        if size is not None and item.data is not None:
            raise RequestError("bad_request", f"input '{item.name}' has both data and binary_data_size")
        if size is None and item.data is None:
            raise RequestError("bad_request", f"input '{item.name}' has neither data nor binary_data_size")
        sizes.append(size)
    return sizes


def _slice_binary(inputs: list[RequestInput], tail: bytes) -> list[bytes | None]:
    """The binary part of each input, in input order; every byte of the tail must belong to one."""
    sizes, parts, offset = _binary_sizes(inputs), [], 0
    for size in sizes:
        parts.append(None if size is None else tail[offset:offset + size])
        offset += size or 0
    if offset != len(tail):
        raise RequestError("bad_binary_size", f"the inputs' binary_data_size add up to {offset} bytes but "
                            f"{len(tail)} bytes follow the JSON header")
    return parts


def unpack_bytes(blob: bytes, count: int, name: str) -> list[bytes]:
    """BYTES tensor in binary form: each element a uint32 little-endian length, then that many bytes."""
    out, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise RequestError("bad_bytes_tensor", f"input '{name}': truncated element length at byte {offset}")
        (n,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + n > len(blob):
            raise RequestError("bad_bytes_tensor", f"input '{name}': element {len(out)} says {n} bytes but only "
                                f"{len(blob) - offset} remain")
        out.append(blob[offset:offset + n])
        offset += n
    if len(out) != count:
        raise RequestError("bad_shape", f"input '{name}': shape says {count} elements, the data holds {len(out)}")
    return out


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flat(data: Any) -> list:
    """Tensor data may be nested row-major lists or already flat."""
    if not isinstance(data, list):
        return [data]
    out = []
    for item in data:
        out.extend(_flat(item) if isinstance(item, list) else [item])
    return out


def _count(shape: list[int], name: str, max_images: int) -> int:
    if any(d < 0 for d in shape) or not shape:
        raise RequestError("bad_shape", f"input '{name}': shape {shape} must be non-empty with no negative sizes")
    n = shape[0]
    if not 1 <= n <= max_images:
        raise RequestError("too_many_images" if n > max_images else "bad_shape",
                            f"input '{name}': batch size {n} must be between 1 and {max_images} per request")
    return n


def _files(item: RequestInput, binary: bytes | None, max_images: int) -> list[bytes]:
    if item.datatype != "BYTES":
        raise RequestError("bad_datatype", f"input '{IMAGE_FILES}' holds encoded image files: datatype BYTES, "
                            f"not {item.datatype}")
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise RequestError("bad_shape", f"input '{IMAGE_FILES}': shape must be [N] or [N,1], got {item.shape}")
    n = _count(item.shape, IMAGE_FILES, max_images)
    if binary is not None:
        return unpack_bytes(binary, n, IMAGE_FILES)
    values = _flat(item.data)
    if len(values) != n:
        raise RequestError("bad_shape", f"input '{IMAGE_FILES}': shape says {n} elements, data holds {len(values)}")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RequestError("bad_base64", f"input '{IMAGE_FILES}' element {i}: in JSON each image file is a "
                                "base64 string (or send it raw with the binary tensor data extension)")
        try:
            out.append(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError("bad_base64", f"input '{IMAGE_FILES}' element {i} is not valid base64") from None
    return out


def _pixels(item: RequestInput, binary: bytes | None, max_images: int, image_size: int) -> np.ndarray:
    want = [image_size, image_size, 3]
    if item.datatype != "UINT8":
        raise RequestError("bad_datatype", f"input '{PIXELS}' holds preprocessed pixels: datatype UINT8, "
                            f"not {item.datatype}")
    if len(item.shape) != 4 or item.shape[1:] != want:
        raise RequestError("bad_shape", f"input '{PIXELS}': shape must be [N,{image_size},{image_size},3] "
                            f"(resized, center-cropped RGB, as model.json says), got {item.shape}")
    n = _count(item.shape, PIXELS, max_images)
    size = n * image_size * image_size * 3
    if binary is not None:
        if len(binary) != size:
            raise RequestError("bad_shape", f"input '{PIXELS}': shape {item.shape} needs {size} bytes, got "
                                f"{len(binary)}")
        return np.frombuffer(binary, dtype=np.uint8).reshape(n, *want)
    values = _flat(item.data)
    if len(values) != size or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                      for v in values):
        raise RequestError("bad_data", f"input '{PIXELS}': data must be {size} integers in 0..255 for shape "
                            f"{item.shape}")
    return np.asarray(values, dtype=np.uint8).reshape(n, *want)


def parse_infer(body: bytes, header_length: str | None, *, max_images: int, image_size: int) -> Request:
    header, tail = split_body(body, header_length)
    req = parse_header(header)
    if len(req.inputs) != 1:
        raise RequestError("bad_request", f"one input per request ('{IMAGE_FILES}' BYTES or '{PIXELS}' UINT8), "
                            f"got {len(req.inputs)}")
    item, binary = req.inputs[0], _slice_binary(req.inputs, tail)[0]
    files = pixels = None
    if item.name == IMAGE_FILES:
        files = _files(item, binary, max_images)
    elif item.name == PIXELS:
        pixels = _pixels(item, binary, max_images, image_size)
    else:
        raise RequestError("unknown_input", f"unknown input '{item.name}'; inputs are '{IMAGE_FILES}' (BYTES, "
                            f"encoded files) and '{PIXELS}' (UINT8 [N,{image_size},{image_size},3])")
    outputs = req.outputs if req.outputs is not None else [RequestOutput(name=PROBABILITIES),
                                                           RequestOutput(name=LABELS)]
    unknown = [o.name for o in outputs if o.name not in OUTPUTS]
    if unknown or not outputs:
        raise RequestError("unknown_output", f"unknown outputs {unknown}; outputs are {', '.join(OUTPUTS)}")
    return Request(req.id, files, pixels, outputs, req.parameters or {})


def _positive_int(value: Any, what: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise RequestError("bad_parameter", f"{what} must be an integer from 1 to {limit}, got {value!r}")
    return value


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool

    def json_data(self) -> list:
        if self.datatype == "BYTES":
            return [v.decode() for v in self.values]
        return self.values.reshape(-1).tolist()

    def raw(self) -> bytes:
        return pack_bytes(self.values) if self.datatype == "BYTES" else self.values.astype("<f4").tobytes()


def _top_k(req: Request, o: RequestOutput, max_top_k: int) -> int:
    """An output's `top_k` parameter, else the request's, else 1."""
    top_k = (o.parameters or {}).get("top_k", req.parameters.get("top_k", 1))
    return _positive_int(top_k, "parameters.top_k", max_top_k)


def heatmap_count(req: Request, max_top_k: int) -> int:
    """How many top classes to map: 0 where neither heatmap output is asked for."""
    asked = [o for o in req.outputs if o.name in (HEATMAPS, HEATMAP_LABELS)]
    return max((_top_k(req, o, max_top_k) for o in asked), default=0)


def build_outputs(req: Request, probs: np.ndarray, classes: list[str], max_top_k: int,
                  heatmaps: np.ndarray | None = None, mapped: np.ndarray | None = None) -> list[Tensor]:
    """The requested outputs from temperature-scaled probabilities [N,C] (and the heatmaps [N,k,h,w] of the
    classes mapped [N,k], where asked)."""
    request_binary = req.parameters.get("binary_data_output") is True
    order = np.argsort(-probs, axis=1, kind="stable")
    out = []
    for o in req.outputs:
        params = o.parameters or {}
        binary = params.get("binary_data", request_binary) is True
        if o.name == PROBABILITIES and params.get("classification") not in (None, 0):
            k = min(_positive_int(params["classification"], "classification", 1 << 30), len(classes))
            values = [f"{probs[r, i]:.9g}:{i}:{classes[i]}".encode() for r in range(len(probs)) for i in order[r, :k]]
            out.append(Tensor(o.name, "BYTES", [len(probs), k], values, binary))
        elif o.name == PROBABILITIES:
            out.append(Tensor(o.name, "FP32", list(probs.shape), probs.astype(np.float32), binary))
        elif o.name == HEATMAPS:
            k = min(_top_k(req, o, max_top_k), len(classes))
            out.append(Tensor(o.name, "FP32", [len(probs), k, *heatmaps.shape[2:]],
                              np.ascontiguousarray(heatmaps[:, :k], np.float32), binary))
        elif o.name == HEATMAP_LABELS:
            k = min(_top_k(req, o, max_top_k), len(classes))
            values = [classes[c].encode() for row in mapped[:, :k] for c in row]
            out.append(Tensor(o.name, "BYTES", [len(probs), k], values, binary))
        else:
            k = min(_top_k(req, o, max_top_k), len(classes))
            values = [classes[i].encode() for r in range(len(probs)) for i in order[r, :k]]
            out.append(Tensor(o.name, "BYTES", [len(probs), k], values, binary))
    return out


def encode_response(model: str, version: str, request_id: str | None,
                    outputs: list[Tensor]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; binary outputs follow the JSON header in output order."""
    items, tail = [], []
    for t in outputs:
        item = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.binary:
            raw = t.raw()
            item["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            item["data"] = t.json_data()
        items.append(item)
    doc = {"model_name": model, "model_version": version, "outputs": items}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not tail:
        return header, {"content-type": "application/json"}
    return header + b"".join(tail), {"content-type": "application/octet-stream",
                                     HEADER_LENGTH: str(len(header))}
