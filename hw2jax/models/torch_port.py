"""The course's PyTorch weights to hw2jax's models and back, as dicts of numpy arrays.

No torch here: a PyTorch state_dict comes in as `{name: tensor.numpy()}` and goes out the same
way (`{k: torch.from_numpy(v)}`, then `load_state_dict(..., strict=True)`). The names are those
of `benchmarks.torch_baselines` (TorchCNN; Seq2Seq with the course skeleton's names).

CNN (hw2jax.models.cnn.CNN): Conv2d weights (O, I, kh, kw) <-> Flax kernels (kh, kw, I, O);
Linear (out, in) <-> (in, out); BatchNorm weight/bias <-> params scale/bias and running_mean/
running_var <-> batch_stats mean/var (num_batches_tracked: ignored on import, written on export).
The vanilla head flattens NCHW in PyTorch (c, h, w) but NHWC in hw2jax (h, w, c), so the input
rows of its first Linear are permuted.

Seq2seq (hw2jax.models.seq2seq.Seq2Seq): hw2jax keeps PyTorch's gate order (i, f, g, o) but
transposed, fused kernels (wi (E, 4H), wh (H, 4H)), both encoder directions stacked on a
leading axis (0 forward, 1 `_reverse`) and ONE bias per gate: import adds bias_ih + bias_hh;
export writes bias_ih = the bias and bias_hh = 0 (exact; PyTorch only ever uses their sum).
The generator's weight is the decoder embedding in both (tied); its bias is `out_bias`.

Vocabularies: the course numbers symbols in order of first appearance in train.tsv, hw2jax
sorts them. Given both symbol lists (`SymbolOrder`), embedding rows and the generator's bias
are moved by symbol, so every symbol keeps its vector.

A state_dict with a missing, unexpected or wrongly shaped entry raises `UserError` with one
line naming the first such key and what was expected.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from hw2jax.errors import UserError
from hw2jax.models.cnn import CNN
from hw2jax.models.seq2seq import Seq2Seq

StateDict = Mapping[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]
BN_COUNTER = "num_batches_tracked"


# -- checking ------------------------------------------------------------------------------------


def check_state_dict(state_dict: StateDict, expected: Shapes,
                     hint: Callable[..., str] = lambda key, problem, axis=None: "",
                     optional: Sequence[str] = ()) -> None:
  """UserError naming the first key of `expected` (in order) that is missing or has another
  shape, else the first key of `state_dict` that is not expected (nor `optional`).
  `hint(key, problem, axis)` adds a clause ('missing', 'shape' or 'unexpected'; for a shape,
  the first axis that differs) to the message; arrays of another rank get none."""
  for key, shape in expected.items():
    if key not in state_dict:
      raise UserError(f"state_dict: missing key {key!r} (expected shape {shape})"
                      f"{hint(key, 'missing')}")
    got = tuple(np.shape(state_dict[key]))
    if got != shape:
      axis = next((i for i, (a, b) in enumerate(zip(got, shape)) if a != b), None)
      why = (hint(key, "shape", axis) if len(got) == len(shape) else
             f"; an array of {len(got)} dimensions where the model has {len(shape)}")
      raise UserError(f"state_dict: shape {got} of {key!r} but expected {shape}{why}")
  for key in state_dict:
    if key not in expected and key not in optional:
      raise UserError(f"state_dict: unexpected key {key!r}{hint(key, 'unexpected')}")


def _f32(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


# -- CNN -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchLayer:
  """One layer with weights: its PyTorch prefix, Flax name and kind ('conv', 'bn', 'dense')."""
  torch: str
  flax: str
  kind: str
  shape: tuple[int, ...]       # PyTorch weight shape (BatchNorm: (features,))


def cnn_layers(model: CNN, image_size: int = 48) -> list[TorchLayer]:
  """The layers of `model` as TorchCNN names them: blocks.<i>.block.<0 conv, 1 BN> and the
  nn.Sequential head (Linear, ReLU, [BatchNorm1d], Dropout, Linear, ReLU, ..., Linear)."""
  layers, cin, k = [], 3, model.kernel_size
  for i, c in enumerate(model.channels):
    layers.append(TorchLayer(f"blocks.{i}.block.0", f"conv{i}", "conv", (c, cin, k, k)))
    if model.batch_norm:
      layers.append(TorchLayer(f"blocks.{i}.block.1", f"bn{i}", "bn", (c,)))
    cin = c
  side = cnn_feature_side(model, image_size)
  features = cin if model.batch_norm else cin * side * side
  layers.append(TorchLayer("head.0", "fc0", "dense", (model.hidden[0], features)))
  index = 2
  if model.batch_norm:
    layers.append(TorchLayer("head.2", "bn_fc0", "bn", (model.hidden[0],)))
    index += 1
  index += 1                                   # Dropout
  dims = list(model.hidden) + [model.num_classes]
  for j in range(1, len(dims)):
    name = "logits" if j == len(dims) - 1 else f"fc{j}"
    layers.append(TorchLayer(f"head.{index}", name, "dense", (dims[j], dims[j - 1])))
    index += 2                                 # Linear, ReLU
  return layers


def cnn_feature_side(model: CNN, image_size: int = 48) -> int:
  """Height (= width) of the last block's feature maps: halved (floor) per block with maxpool."""
  side = image_size
  for _ in model.channels:
    side = side // 2 if model.maxpool else side
  return side


def cnn_torch_shapes(model: CNN, image_size: int = 48) -> Shapes:
  """{PyTorch name: shape} of every entry a TorchCNN state_dict of `model` holds, in order."""
  out = {}
  for layer in cnn_layers(model, image_size):
    if layer.kind == "bn":
      for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{layer.torch}.{name}"] = layer.shape
      out[f"{layer.torch}.{BN_COUNTER}"] = ()
    else:
      out[f"{layer.torch}.weight"] = layer.shape
      out[f"{layer.torch}.bias"] = layer.shape[:1]
  return out


def _cnn_hint(model: CNN) -> Callable[..., str]:
  def hint(key, problem, axis=None):
    if problem != "shape" and (".block.1." in key or key.startswith("head.2.")):
      return ("; a checkpoint without BatchNorm: is it the vanilla model (--model=vanilla)?"
              if problem == "missing" else
              "; BatchNorm weights: is it the BN+GAP model (--model=bn_gap)?")
    if problem == "shape" and key.startswith("head.0."):
      return "; the vanilla and BN+GAP heads differ (--model), as do other image sizes"
    return ""
  return hint


def cnn_from_torch(model: CNN, state_dict: StateDict, image_size: int = 48) -> dict:
  """A TorchCNN state_dict -> hw2jax variables {'params': ..., 'batch_stats': ...} of `model`
  ('batch_stats' only with BatchNorm). `image_size` fixes the vanilla head's input size."""
  shapes = cnn_torch_shapes(model, image_size)
  counters = [k for k in shapes if k.endswith(BN_COUNTER)]
  check_state_dict(state_dict, {k: v for k, v in shapes.items() if k not in counters},
                   _cnn_hint(model), optional=counters)
  params, stats = {}, {}
  side = cnn_feature_side(model, image_size)
  for layer in cnn_layers(model, image_size):
    get = lambda name: _f32(state_dict[f"{layer.torch}.{name}"])
    if layer.kind == "conv":
      params[layer.flax] = {"kernel": get("weight").transpose(2, 3, 1, 0), "bias": get("bias")}
    elif layer.kind == "bn":
      params[layer.flax] = {"scale": get("weight"), "bias": get("bias")}
      stats[layer.flax] = {"mean": get("running_mean"), "var": get("running_var")}
    else:
      kernel = get("weight").T
      if layer.flax == "fc0" and not model.batch_norm:
        kernel = chw_rows_to_hwc(kernel, side)
      params[layer.flax] = {"kernel": kernel, "bias": get("bias")}
  return {"params": params, "batch_stats": stats} if model.batch_norm else {"params": params}


def cnn_to_torch(model: CNN, variables: Mapping, image_size: int = 48,
                 num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """hw2jax variables of `model` -> a TorchCNN state_dict as numpy arrays (every BatchNorm's
  num_batches_tracked set to `num_batches_tracked`, an int64 scalar)."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  side = cnn_feature_side(model, image_size)
  out = {}
  for layer in cnn_layers(model, image_size):
    p, t = params[layer.flax], layer.torch
    if layer.kind == "conv":
      out[f"{t}.weight"] = _f32(p["kernel"]).transpose(3, 2, 0, 1)
      out[f"{t}.bias"] = _f32(p["bias"])
    elif layer.kind == "bn":
      out.update({f"{t}.weight": _f32(p["scale"]), f"{t}.bias": _f32(p["bias"]),
                  f"{t}.running_mean": _f32(stats[layer.flax]["mean"]),
                  f"{t}.running_var": _f32(stats[layer.flax]["var"]),
                  f"{t}.{BN_COUNTER}": np.array(num_batches_tracked, np.int64)})
    else:
      kernel = _f32(p["kernel"])
      if layer.flax == "fc0" and not model.batch_norm:
        kernel = hwc_rows_to_chw(kernel, side)
      out[f"{t}.weight"], out[f"{t}.bias"] = np.ascontiguousarray(kernel.T), _f32(p["bias"])
  check_state_dict(out, cnn_torch_shapes(model, image_size))
  return out


def chw_rows_to_hwc(kernel: np.ndarray, side: int) -> np.ndarray:
  """(C*side*side, out) rows in PyTorch's NCHW flatten order -> (side*side*C, out) rows in
  hw2jax's NHWC order."""
  n, out = kernel.shape
  c = n // (side * side)
  return kernel.reshape(c, side, side, out).transpose(1, 2, 0, 3).reshape(n, out)


def hwc_rows_to_chw(kernel: np.ndarray, side: int) -> np.ndarray:
  """The inverse of `chw_rows_to_hwc`."""
  n, out = kernel.shape
  c = n // (side * side)
  return kernel.reshape(side, side, c, out).transpose(2, 0, 1, 3).reshape(n, out)


# -- seq2seq -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SymbolOrder:
  """One vocabulary's symbols by id on both sides: `torch` the checkpoint's (the course's
  first-appearance order), `jax` the hw2jax model's (sorted). Same symbols, any order."""
  torch: Sequence[str]
  jax: Sequence[str]
  name: str = "vocabulary"

  def jax_rows(self) -> np.ndarray:
    """(V,) ints: for each hw2jax id, the PyTorch row of the same symbol."""
    self._check()
    index = {s: i for i, s in enumerate(self.torch)}
    return np.array([index[s] for s in self.jax], np.int64)

  def torch_rows(self) -> np.ndarray:
    """(V,) ints: for each PyTorch id, the hw2jax row of the same symbol."""
    return np.argsort(self.jax_rows())

  def _check(self) -> None:
    for side, symbols in (("PyTorch", self.torch), ("hw2jax", self.jax)):
      if len(set(symbols)) != len(symbols):
        raise UserError(f"{self.name}: the {side} symbol list repeats a symbol")
    if len(self.torch) != len(self.jax):
      raise UserError(f"{self.name}: {len(self.torch)} PyTorch symbols but {len(self.jax)} in "
                      "hw2jax; were both built from the same training pairs?")
    known = set(self.jax)
    missing = [s for s in self.torch if s not in known]
    if missing:
      raise UserError(f"{self.name}: PyTorch symbol {missing[0]!r} is not in hw2jax's; were "
                      "both built from the same training pairs?")


def _rows(order: SymbolOrder | None, size: int, inverse: bool) -> np.ndarray:
  if order is None:
    return np.arange(size)
  if len(order.jax) != size:
    raise UserError(f"{order.name}: {len(order.jax)} symbols for a model of {size}")
  return order.torch_rows() if inverse else order.jax_rows()


def _lstm_shapes(prefix: str, inputs: int, units: int, suffix: str = "") -> Shapes:
  return {f"{prefix}.weight_ih_l0{suffix}": (4 * units, inputs),
          f"{prefix}.weight_hh_l0{suffix}": (4 * units, units),
          f"{prefix}.bias_ih_l0{suffix}": (4 * units,),
          f"{prefix}.bias_hh_l0{suffix}": (4 * units,)}


ATTENTION = ("W_s", "W_h", "v", "W_out")          # PyTorch names; Flax: w_s, w_h, v, w_out


def seq2seq_torch_shapes(model: Seq2Seq) -> Shapes:
  """{PyTorch name: shape} of the course Seq2Seq's state_dict for `model`'s sizes, in order."""
  H, F = model.hidden_size, model.hidden_size // 2
  out = {"encoder.embedding.weight": (model.src_vocab, H)}
  out |= _lstm_shapes("encoder.lstm", H, F) | _lstm_shapes("encoder.lstm", H, F, "_reverse")
  out["decoder.embedding.weight"] = (model.tgt_vocab, H)
  out |= _lstm_shapes("decoder.lstm", H, H)
  if model.attention:
    out |= {"decoder.attn.W_s.weight": (H, H), "decoder.attn.W_h.weight": (H, H),
            "decoder.attn.v.weight": (1, H), "decoder.attn.W_out.weight": (H, 2 * H)}
  out |= {"generator.weight": (model.tgt_vocab, H), "generator.bias": (model.tgt_vocab,)}
  return out


def _seq2seq_hint(key: str, problem: str, axis: int | None = None) -> str:
  if ".attn." in key and problem == "missing":
    return "; is it a model with --attention?"
  if ".attn." in key and problem == "unexpected":
    return "; it is a model with attention: add --attention"
  if problem == "shape" and axis == 0 and ("embedding" in key or key.startswith("generator")):
    return "; a vocabulary of another size: build both from the same training pairs"
  if problem == "shape":
    return "; another hidden size?"
  return ""


def _lstm_from_torch(sd: StateDict, prefix: str, suffix: str = "") -> dict:
  """One PyTorch LSTM direction -> wi (E, 4H), wh (H, 4H), b (4H,) (gate order kept)."""
  get = lambda name: _f32(sd[f"{prefix}.{name}_l0{suffix}"])
  return {"wi": get("weight_ih").T, "wh": get("weight_hh").T,
          "b": get("bias_ih") + get("bias_hh")}


def _lstm_to_torch(p: Mapping, prefix: str, suffix: str = "") -> dict[str, np.ndarray]:
  b = _f32(p["b"])
  return {f"{prefix}.weight_ih_l0{suffix}": np.ascontiguousarray(_f32(p["wi"]).T),
          f"{prefix}.weight_hh_l0{suffix}": np.ascontiguousarray(_f32(p["wh"]).T),
          f"{prefix}.bias_ih_l0{suffix}": b, f"{prefix}.bias_hh_l0{suffix}": np.zeros_like(b)}


def seq2seq_from_torch(model: Seq2Seq, state_dict: StateDict, src_order: SymbolOrder | None = None,
                       tgt_order: SymbolOrder | None = None) -> dict:
  """A course Seq2Seq state_dict -> hw2jax `params` of `model`. With symbol orders, embedding
  rows (and the generator's bias) move to hw2jax's ids of the same symbols."""
  check_state_dict(state_dict, seq2seq_torch_shapes(model), _seq2seq_hint)
  sd = state_dict
  if not np.array_equal(sd["generator.weight"], sd["decoder.embedding.weight"]):
    raise UserError("state_dict: 'generator.weight' differs from 'decoder.embedding.weight'; "
                    "the course's model (and hw2jax's) ties them")
  src = _rows(src_order, model.src_vocab, inverse=False)
  tgt = _rows(tgt_order, model.tgt_vocab, inverse=False)
  forward = _lstm_from_torch(sd, "encoder.lstm")
  backward = _lstm_from_torch(sd, "encoder.lstm", "_reverse")
  params = {
      "src_embed": {"embedding": _f32(sd["encoder.embedding.weight"])[src]},
      "encoder": {k: np.stack([forward[k], backward[k]]) for k in forward},
      "tgt_embed": {"embedding": _f32(sd["decoder.embedding.weight"])[tgt]},
      "decoder": _lstm_from_torch(sd, "decoder.lstm"),
      "out_bias": _f32(sd["generator.bias"])[tgt],
  }
  if model.attention:
    params["attend"] = {name.lower(): {"kernel": _f32(sd[f"decoder.attn.{name}.weight"]).T}
                        for name in ATTENTION}
  return params


def seq2seq_to_torch(model: Seq2Seq, params: Mapping, src_order: SymbolOrder | None = None,
                     tgt_order: SymbolOrder | None = None) -> dict[str, np.ndarray]:
  """hw2jax `params` of `model` -> the course Seq2Seq's state_dict as numpy arrays (LSTM
  bias_hh all zero, generator.weight a copy of decoder.embedding.weight)."""
  src = _rows(src_order, model.src_vocab, inverse=True)
  tgt = _rows(tgt_order, model.tgt_vocab, inverse=True)
  enc = {k: _f32(v) for k, v in params["encoder"].items()}
  out = {"encoder.embedding.weight": _f32(params["src_embed"]["embedding"])[src]}
  out |= _lstm_to_torch({k: v[0] for k, v in enc.items()}, "encoder.lstm")
  out |= _lstm_to_torch({k: v[1] for k, v in enc.items()}, "encoder.lstm", "_reverse")
  embedding = _f32(params["tgt_embed"]["embedding"])[tgt]
  out["decoder.embedding.weight"] = embedding
  out |= _lstm_to_torch(params["decoder"], "decoder.lstm")
  if model.attention:
    out |= {f"decoder.attn.{name}.weight":
            np.ascontiguousarray(_f32(params["attend"][name.lower()]["kernel"]).T)
            for name in ATTENTION}
  out["generator.weight"] = embedding.copy()
  out["generator.bias"] = _f32(params["out_bias"])[tgt]
  check_state_dict(out, seq2seq_torch_shapes(model), _seq2seq_hint)
  return out
