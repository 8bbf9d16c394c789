"""Proof of fidelity: hw2jax's CNNs and seq2seq ARE the course's PyTorch models, number for number.

PyTorch weights converted with hw2jax.models.torch_port give the same eval-mode outputs, the
same optimizer step and the same greedy spellings, both ways round and across the course's
vocabulary order. Two places where they are NOT the same are pinned down exactly:
BatchNorm's running variance (Flax averages the biased batch variance, PyTorch the unbiased
one) and the LSTM biases (PyTorch trains two per gate whose sum is the one hw2jax trains).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (assert_trees_close, load_numpy_state, numpy_state, p2g_pairs,
                     torch_adam_steps)
from hw2jax.data import phonemes
from hw2jax.errors import UserError
from hw2jax.recipes import p2g
from hw2jax.models import cnn, decoding, torch_port
from hw2jax.models import seq2seq as s2s
from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib

torch = pytest.importorskip("torch")
from benchmarks import torch_baselines as tb  # noqa: E402  (needs torch)

TOL = dict(rtol=1e-5, atol=1e-5)     # every comparison below, unless it says otherwise
H = 128


# -- helpers -------------------------------------------------------------------------------------


def new_state(model, variables, optimizer: str, lr: float,
              update_scale=None) -> trainer_lib.TrainState:
  """A hw2jax TrainState holding `variables`, with the trainer's optimizer at `lr`."""
  optimizer = optimizer_lib.make_optimizer(optimizer, lr, update_scale=update_scale)
  return trainer_lib.TrainState(
      step=0, apply_fn=model.apply, params=variables["params"], tx=optimizer.tx,
      opt_state=optimizer.init(variables["params"]), batch_stats=variables.get("batch_stats", {}),
      key=jax.random.key_data(trainer_lib.prng_key(0)))


# -- CNN -----------------------------------------------------------------------------------------


def images(n=8, seed=0):
  """n random 48x48 RGB images (uint8 NHWC for hw2jax, float NCHW / 256 for PyTorch), labels."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
  y = rng.integers(0, 6, n).astype(np.int32)
  return x, y, torch.from_numpy(x.astype(np.float32) / 256.0).permute(0, 3, 1, 2).contiguous()


def torch_cnn(batch_norm: bool, seed=0):
  """TorchCNN without dropout; with BatchNorm, random affine weights and running statistics."""
  torch.manual_seed(seed)
  model = tb.TorchCNN(batch_norm=batch_norm, dropout=0.0)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
  return model


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vanilla", "bn_gap"])
def test_pytorch_cnn_weights_give_the_same_eval_logits_in_hw2jax(batch_norm):
  net = torch_cnn(batch_norm).eval()
  model = cnn.CNN(batch_norm=batch_norm, dropout=0.0)
  variables = torch_port.cnn_from_torch(model, numpy_state(net))
  x, _, xt = images()
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  with torch.no_grad():
    expected = net(xt).numpy()                              # TorchCNN returns log-softmax
  np.testing.assert_allclose(jax.nn.log_softmax(logits), expected, **TOL)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vanilla", "bn_gap"])
def test_one_sgd_step_gives_the_same_weights(batch_norm):
  net = torch_cnn(batch_norm).train()
  model = cnn.CNN(batch_norm=batch_norm, dropout=0.0)
  state = new_state(model, torch_port.cnn_from_torch(model, numpy_state(net)), "sgd", 0.01)
  x, y, xt = images()
  step = jax.jit(functools.partial(trainer_lib.train_step, loss_fn=cnn.loss_fn))
  state, _ = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(y)}, jnp.ones(8))
  optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
  torch.nn.NLLLoss()(net(xt), torch.from_numpy(y).long()).backward()
  optimizer.step()
  assert_trees_close(state.params, torch_port.cnn_from_torch(model, numpy_state(net))["params"])


@pytest.fixture(scope="module")
def bn_forward():
  """Running statistics before and after one train-mode forward of the BN+GAP CNN, on both
  sides: {'old', 'torch', 'hw2jax'} (hw2jax batch_stats layout) and the count per statistic."""
  net = torch_cnn(True).train()
  model = cnn.CNN(batch_norm=True, dropout=0.0)
  old = torch_port.cnn_from_torch(model, numpy_state(net))
  x, _, xt = images()
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mask=jnp.ones(8),
                                                mutable=["batch_stats"]))(old, x)
  with torch.no_grad():
    net(xt)
  new = torch_port.cnn_from_torch(model, numpy_state(net))["batch_stats"]
  counts = {"bn0": 8 * 48 * 48, "bn1": 8 * 24 * 24, "bn2": 8 * 12 * 12, "bn_fc0": 8}
  return {"old": old["batch_stats"], "torch": new, "hw2jax": updates["batch_stats"]}, counts


def test_bn_train_forward_gives_the_same_running_means(bn_forward):
  stats, _ = bn_forward
  for name in stats["torch"]:
    np.testing.assert_allclose(stats["hw2jax"][name]["mean"], stats["torch"][name]["mean"],
                               err_msg=name, **TOL)


def test_bn_train_forward_gives_pytorchs_running_variances(bn_forward):
  """PyTorch averages the UNBIASED batch variance (n/(n-1), n values per channel) into
  running_var; at n = 8 (the head's BatchNorm1d) Flax's biased one would be 7/8 of it."""
  stats, _ = bn_forward
  for name in stats["torch"]:
    np.testing.assert_allclose(stats["hw2jax"][name]["var"], stats["torch"][name]["var"],
                               err_msg=name, **TOL)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vanilla", "bn_gap"])
def test_hw2jax_cnn_weights_load_strictly_into_pytorch_with_the_same_logits(batch_norm):
  model = cnn.CNN(batch_norm=batch_norm, dropout=0.0)
  x, _, xt = images(seed=1)
  variables = jax.jit(lambda: model.init({"params": trainer_lib.prng_key(3)}, x, train=False))()
  if batch_norm:                   # non-trivial running statistics
    rng = np.random.default_rng(0)
    variables = dict(variables, batch_stats=jax.tree_util.tree_map(
        lambda a: a + rng.uniform(0.1, 0.5, a.shape).astype(np.float32), variables["batch_stats"]))
  net = tb.TorchCNN(batch_norm=batch_norm, dropout=0.0).eval()
  load_numpy_state(net, torch_port.cnn_to_torch(model, variables))
  with torch.no_grad():
    got = net(xt).numpy()
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(got, jax.nn.log_softmax(logits), **TOL)


# -- seq2seq -------------------------------------------------------------------------------------


PAIRS = p2g_pairs(64, seed=3, max_len=7)


@pytest.fixture(scope="module")
def vocabs():
  """{'sorted': hw2jax's (src, tgt) Vocab, 'course': first-appearance order} of PAIRS."""
  pairs = [(tuple(p.split()), w) for p, w in PAIRS]
  src, tgt = phonemes.Vocab.build(p for p, _ in pairs), phonemes.Vocab.build(w for _, w in pairs)
  return {"sorted": (src, tgt), "course": phonemes.course_vocabs(pairs), "pairs": pairs}


def torch_seq2seq(vocab_sizes, attention, seed=0):
  torch.manual_seed(seed)
  return tb.Seq2Seq(*vocab_sizes, attention, hidden=H, dropout=0.0)


def jax_seq2seq(vocab_sizes, attention):
  return s2s.Seq2Seq(*vocab_sizes, hidden_size=H, attention=attention, dropout=0.0)


def p2g_batch(pairs, src_vocab, tgt_vocab):
  """Encoded pairs (varying lengths, PAD on both sides): numpy int32 arrays and torch tensors."""
  arrays = phonemes.encode(pairs, src_vocab, tgt_vocab)
  tensors = {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items()}
  return arrays, tensors


def teacher_forced(net, model, params, arrays, tensors):
  """(hw2jax logits, PyTorch logits) of the same batch, both (B, T, V), eval mode."""
  net.eval()
  with torch.no_grad():
    expected = net(tensors["src"], tensors["src_len"], tensors["tgt"][:, :-1]).numpy()
  got = jax.jit(model.apply)({"params": params}, arrays["src"], arrays["src_len"],
                             arrays["tgt"][:, :-1])
  return np.asarray(got), expected


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_pytorch_seq2seq_weights_give_the_same_teacher_forced_logits(vocabs, attention):
  src_v, tgt_v = vocabs["sorted"]
  net = torch_seq2seq((len(src_v), len(tgt_v)), attention)
  model = jax_seq2seq((len(src_v), len(tgt_v)), attention)
  params = torch_port.seq2seq_from_torch(model, numpy_state(net))
  arrays, tensors = p2g_batch(vocabs["pairs"][:12], src_v, tgt_v)
  assert len(set(arrays["src_len"].tolist())) > 3 and (arrays["tgt"] == s2s.PAD).any()
  np.testing.assert_allclose(*teacher_forced(net, model, params, arrays, tensors), **TOL)


def split_lstm_biases(params):
  """(params without the LSTM biases, {'encoder': b, 'decoder': b}) of hw2jax seq2seq params."""
  rest = {k: v for k, v in params.items() if k not in ("encoder", "decoder")}
  rest["encoder"] = {k: v for k, v in params["encoder"].items() if k != "b"}
  rest["decoder"] = {k: v for k, v in params["decoder"].items() if k != "b"}
  return rest, {"encoder": np.asarray(params["encoder"]["b"]),
                "decoder": np.asarray(params["decoder"]["b"])}


def torch_grads(net) -> dict:
  """The gradients of a course Seq2Seq named like its state_dict (generator.weight: the tied
  embedding's gradient)."""
  params = dict(net.named_parameters())
  tied = {"generator.weight": "decoder.embedding.weight"}
  return {k: params[tied.get(k, k)].grad.numpy().copy() for k in net.state_dict()}


@jax.jit
def adam_step_and_gradients(state, batch):
  """hw2jax's loss and gradients at `state`, and the trainer's step from it (one program)."""
  mask = jnp.ones(batch["src"].shape[0], jnp.float32)
  loss_and_grads = jax.value_and_grad(functools.partial(s2s.loss_fn, state.apply_fn),
                                      has_aux=True)(state.params, {}, batch, mask,
                                                    trainer_lib.rng(state))
  return (*loss_and_grads, trainer_lib.train_step(state, batch, mask, loss_fn=s2s.loss_fn)[0])


# Adam's first update is lr * g / (|g| + 1e-8): where |g| is near 1e-8 it turns float32 rounding
# of the gradient (~1e-10 here) into up to ~1e-4 of weight (13 of ~720k entries here, all with
# |g| <= 1.3e-8). So updates are compared where |g| >= 1e-7 (or g == 0: no move), and the
# gradients themselves everywhere.
WELL_CONDITIONED = 1e-7


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_one_adam_step_gives_the_same_weights_lstm_biases_included(vocabs, attention):
  """Same loss, same gradients (to 1e-6) and the same Adam step (lr 0.003, to 1e-5) on every
  weight. PyTorch's bias_ih and bias_hh get the same gradient and each take a full step, so
  their sum (hw2jax's one bias) moves twice as far: P2G's optimizer doubles that update
  (seq2seq.torch_update_scale), and without it the step would differ. The state is the one
  the P2G experiment trains (`experiments.p2g.new_state`), holding PyTorch's weights."""
  src_v, tgt_v = vocabs["sorted"]
  net = torch_seq2seq((len(src_v), len(tgt_v)), attention).train()
  model = jax_seq2seq((len(src_v), len(tgt_v)), attention)
  before = torch_port.seq2seq_from_torch(model, numpy_state(net))
  arrays, tensors = p2g_batch(vocabs["pairs"][:16], src_v, tgt_v)
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  config = p2g.Config(hidden_size=H, attention=attention, dropout=0.0)
  assert config.learning_rate == 0.003
  state = p2g.new_state(config, model).replace(params=before)
  (loss, _), grads, state = adam_step_and_gradients(state, batch)
  unscaled = adam_step_and_gradients(new_state(model, {"params": before}, "adam", 0.003),
                                     batch)[2]
  optimizer = torch.optim.Adam(net.parameters(), lr=0.003)
  logits = net(tensors["src"], tensors["src_len"], tensors["tgt"][:, :-1])
  torch_loss = torch.nn.CrossEntropyLoss(ignore_index=s2s.PAD)(
      logits.reshape(-1, logits.shape[-1]), tensors["tgt"][:, 1:].reshape(-1))
  torch_loss.backward()
  optimizer.step()
  np.testing.assert_allclose(loss, torch_loss.item(), **TOL)
  (g, g_b), (tg, tg_b) = [split_lstm_biases(x) for x in
                          (grads, torch_port.seq2seq_from_torch(model, torch_grads(net)))]
  assert_trees_close(g, tg, rtol=1e-5, atol=1e-6)
  for name in ("encoder", "decoder"):      # the two PyTorch biases' gradients, summed
    np.testing.assert_allclose(tg_b[name], 2 * g_b[name], rtol=1e-5, atol=1e-6)
  after = torch_port.seq2seq_from_torch(model, numpy_state(net))
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    well = (np.abs(grad) >= WELL_CONDITIONED) | (grad == 0)
    assert well.mean() > 0.9, jax.tree_util.keystr(path)
    get = lambda tree: np.asarray(functools.reduce(lambda t, k: t[k.key], path, tree))[well]
    np.testing.assert_allclose(get(state.params), get(after), err_msg=jax.tree_util.keystr(path),
                               **TOL)
  moved = lambda params: np.abs(params["decoder"]["b"] - before["decoder"]["b"]).max()
  assert moved(unscaled.params) < 0.6 * moved(state.params)     # the scale is what matches


def random_words(n, src_vocab, seed=0):
  rng = np.random.default_rng(seed)
  symbols = src_vocab.symbols[4:]
  return [tuple(symbols[i] for i in rng.integers(0, len(symbols), rng.integers(1, 9)))
          for _ in range(n)]


def briefly_trained(net, pairs, src_vocab, tgt_vocab, steps=20):
  """`net` after a few full-batch Adam steps on `pairs` (it then stops at EOS)."""
  _, tensors = p2g_batch(pairs, src_vocab, tgt_vocab)
  return torch_adam_steps(net, tensors["src"], tensors["src_len"], tensors["tgt"], steps, 0.003)


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_greedy_decoding_of_50_words_spells_identically(vocabs, attention):
  src_v, tgt_v = vocabs["sorted"]
  net = briefly_trained(torch_seq2seq((len(src_v), len(tgt_v)), attention, seed=5),
                        vocabs["pairs"], src_v, tgt_v)
  model = jax_seq2seq((len(src_v), len(tgt_v)), attention)
  params = torch_port.seq2seq_from_torch(model, numpy_state(net))
  arrays = phonemes.encode_sources(random_words(50, src_v), src_v)
  got = decoding.strings(decoding.greedy(model, params, arrays["src"], arrays["src_len"]).tokens,
                         tgt_v)
  ids = tb.generate(net, torch.from_numpy(arrays["src"].astype(np.int64)),
                    torch.from_numpy(arrays["src_len"].astype(np.int64)))
  expected = [tgt_v.decode(row) for row in ids]
  assert got == expected
  lengths = {len(s) for s in expected}
  assert len(lengths) > 3 and min(lengths) < decoding.MAX_LEN, lengths   # EOS stops them


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_hw2jax_seq2seq_weights_load_strictly_into_pytorch_with_the_same_logits(vocabs,
                                                                               attention):
  src_v, tgt_v = vocabs["sorted"]
  model = jax_seq2seq((len(src_v), len(tgt_v)), attention)
  arrays, tensors = p2g_batch(vocabs["pairs"][:12], src_v, tgt_v)
  params = jax.jit(model.init)({"params": trainer_lib.prng_key(7)}, arrays["src"],
                               arrays["src_len"], arrays["tgt"][:, :-1])["params"]
  net = torch_seq2seq((len(src_v), len(tgt_v)), attention)
  state = torch_port.seq2seq_to_torch(model, params)
  load_numpy_state(net, state)
  assert np.all(state["encoder.lstm.bias_hh_l0"] == 0)
  np.testing.assert_allclose(*teacher_forced(net, model, params, arrays, tensors), **TOL)


def test_a_course_order_checkpoint_gives_the_same_logits_per_symbol_in_sorted_hw2jax(vocabs):
  (src_c, tgt_c), (src_s, tgt_s) = vocabs["course"], vocabs["sorted"]
  assert src_c.symbols != src_s.symbols and tgt_c.symbols != tgt_s.symbols
  assert set(src_c.symbols) == set(src_s.symbols) and set(tgt_c.symbols) == set(tgt_s.symbols)
  orders = (torch_port.SymbolOrder(src_c.symbols, src_s.symbols, "source vocabulary"),
            torch_port.SymbolOrder(tgt_c.symbols, tgt_s.symbols, "target vocabulary"))
  net = torch_seq2seq((len(src_c), len(tgt_c)), True)
  model = jax_seq2seq((len(src_s), len(tgt_s)), True)
  params = torch_port.seq2seq_from_torch(model, numpy_state(net), *orders)
  pairs = vocabs["pairs"][:12]
  arrays_c, tensors_c = p2g_batch(pairs, src_c, tgt_c)      # PyTorch reads course ids
  arrays_s, _ = p2g_batch(pairs, src_s, tgt_s)              # hw2jax its sorted ids
  net.eval()
  with torch.no_grad():
    expected = net(tensors_c["src"], tensors_c["src_len"], tensors_c["tgt"][:, :-1]).numpy()
  got = np.asarray(jax.jit(model.apply)({"params": params}, arrays_s["src"], arrays_s["src_len"],
                                        arrays_s["tgt"][:, :-1]))
  columns = orders[1].jax_rows()          # hw2jax id j is PyTorch id columns[j], same symbol
  np.testing.assert_allclose(got, expected[..., columns], **TOL)
  back, original = torch_port.seq2seq_to_torch(model, params, *orders), numpy_state(net)
  for key, value in back.items():        # the round trip gives the course order back
    if ".bias_hh_" in key:               # exported as 0, with bias_ih holding the sum
      continue
    if ".bias_ih_" in key:
      value = value - original[key.replace("_ih_", "_hh_")]
    np.testing.assert_allclose(value, original[key], err_msg=key, **TOL)


def test_course_vocabs_number_symbols_in_order_of_first_appearance():
  pairs = [(("k", "æ", "t"), "cat"), (("æ", "b"), "ab")]
  src, tgt = phonemes.course_vocabs(pairs)
  assert src.symbols == phonemes.SPECIALS + ("k", "æ", "t", "b")
  assert tgt.symbols == phonemes.SPECIALS + ("c", "a", "t", "b")


# -- mismatching checkpoints -----------------------------------------------------------------


def edited(state: dict, **changes) -> dict:
  """`state` with entries replaced (None: deleted); keys spelled with '__' for '.'."""
  state = dict(state)
  for key, value in changes.items():
    key = key.replace("__", ".")
    state.pop(key) if value is None else state.__setitem__(key, value)
  return state


def s2s_import(ckpt_attention, model_attention, sizes=(20, 16), **changes):
  state = edited(numpy_state(torch_seq2seq(sizes, ckpt_attention)), **changes)
  return lambda: torch_port.seq2seq_from_torch(jax_seq2seq((20, 16), model_attention), state)


def cnn_import(ckpt_bn, model_bn, **changes):
  state = edited(numpy_state(tb.TorchCNN(batch_norm=ckpt_bn)), **changes)
  return lambda: torch_port.cnn_from_torch(cnn.CNN(batch_norm=model_bn), state)


MISMATCHES = {   # case: (the import, the message or a fragment of it)
    "missing attention key": (
        lambda: s2s_import(True, True, decoder__attn__W_s__weight=None),
        "state_dict: missing key 'decoder.attn.W_s.weight' (expected shape (128, 128)); is it "
        "a model with --attention?"),
    "attention checkpoint, plain model": (
        lambda: s2s_import(True, False),
        "state_dict: unexpected key 'decoder.attn.W_s.weight'; it is a model with attention"),
    "another vocabulary size": (
        lambda: s2s_import(False, False, sizes=(21, 16)),
        "state_dict: shape (21, 128) of 'encoder.embedding.weight' but expected (20, 128); a "
        "vocabulary of another size"),
    "another embedding width, same vocabulary": (
        lambda: s2s_import(False, False, encoder__embedding__weight=np.zeros((20, 7), np.float32)),
        "state_dict: shape (20, 7) of 'encoder.embedding.weight' but expected (20, 128); another "
        "hidden size?"),
    "a generator bias of another rank": (
        lambda: s2s_import(False, False, generator__bias=np.zeros((16, 1), np.float32)),
        "state_dict: shape (16, 1) of 'generator.bias' but expected (16,); an array of 2 "
        "dimensions where the model has 1"),
    "untied generator": (
        lambda: s2s_import(False, False, generator__weight=np.ones((16, H), np.float32)),
        "'generator.weight' differs from 'decoder.embedding.weight'"),
    "wrong conv shape": (
        lambda: cnn_import(False, False,
                           blocks__0__block__0__weight=np.zeros((64, 3, 3, 3), np.float32)),
        "state_dict: shape (64, 3, 3, 3) of 'blocks.0.block.0.weight' but expected "
        "(32, 3, 3, 3)"),
    "vanilla checkpoint, BN model": (
        lambda: cnn_import(False, True),
        "state_dict: missing key 'blocks.0.block.1.weight' (expected shape (32,)); a checkpoint "
        "without BatchNorm: is it the vanilla model"),
    "extra key": (
        lambda: cnn_import(True, True, head__9__weight=np.zeros(3, np.float32)),
        "state_dict: unexpected key 'head.9.weight'"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_mismatching_checkpoint_raises_one_line_naming_the_first_wrong_key(case):
  make, expected = MISMATCHES[case]
  load = make()
  with pytest.raises(UserError) as e:
    load()
  assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)


def test_symbol_lists_that_differ_are_refused():
  order = torch_port.SymbolOrder(("<pad>", "a", "b"), ("<pad>", "a", "c"), "target vocabulary")
  with pytest.raises(UserError, match="target vocabulary: PyTorch symbol 'b' is not in"):
    order.jax_rows()
