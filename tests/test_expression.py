"""`portrait_nb.expression` as the project uses it: a `tiny` encoder trained here from scratch separates expression from
identity on renders of held-out people; checkpoints reload bit for bit through the registry; user encoders plug in;
bad inputs get clear errors; the notebook trains and writes its run through papermill."""
import json
import nbformat
import papermill as pm
import pytest
import torch
from pathlib import Path
from torch import nn
from portrait_nb import expression as ex
from portrait_nb.head import HeadModel
from portrait_nb.synth import sample_identity

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = (100, 101, 102)       # identities far from the tiny preset's training identities 0 … 7
MARGIN = 0.5                     # identity-only distance < MARGIN x expression-only distance (on average over views)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "The tiny preset trained with seed 0, and its checkpoint."
    torch.set_num_threads(2)
    ecfg, tcfg = ex.get_presets('tiny')
    head = HeadModel(resolution=tcfg.head_resolution, n_shape=50, n_expr=tcfg.n_expr)
    enc, reg, hist = ex.fit(ecfg, tcfg, ex.make_pool(head, tcfg, 0, 'train'), seed=0)
    folder = ex.save_checkpoint(tmp_path_factory.mktemp('ck') / 'tiny', enc, reg, preset='tiny')
    return dict(head=head, encoder=enc, regressor=reg, folder=folder, ecfg=ecfg, tcfg=tcfg)


def expression(head, **named) -> torch.Tensor:
    "An expression vector with the named coefficients set (the column order depends on the head's resolution)."
    e = torch.zeros(head.n_expr)
    for k, v in named.items(): e[head.expression_names.index(k)] = v
    return e


def codes(trained, identities, expressions, jaws, views) -> torch.Tensor:
    "Codes of renders, one per (identity, expression, jaw) with the given shared `views`."
    size = trained['tcfg'].image_size
    imgs, lms = ex.render_faces(trained['head'], identities, torch.stack(expressions), torch.stack(jaws), views, size)
    with torch.no_grad(): return trained['encoder'](ex.crop_faces(imgs, lms, trained['ecfg'].crop_size))


def test_codes_follow_expression_not_identity(trained):
    """Two renders that differ only in identity (same expression, pose, camera, light) have closer codes than two that
    differ only in expression (same person): on every one of 6 views (drawn from the tiny preset's near-frontal range),
    and on average by a factor MARGIN."""
    head, n = trained['head'], 6
    views = ex.sample_views(n, seed=11, image_size=trained['tcfg'].image_size, view_range=trained['tcfg'].view_range)
    a, b = sample_identity(0, HELD_OUT[0]), sample_identity(0, HELD_OUT[1])
    calm, strong = expression(head), expression(head, blink_left=2.5, blink_right=2.5, smile=2.5, lips_part=2.)
    shut, open_ = torch.zeros(3), torch.tensor([0.25, 0., 0.])
    z_a = codes(trained, [a] * n, [calm] * n, [shut] * n, views)
    z_b = codes(trained, [b] * n, [calm] * n, [shut] * n, views)               # only the identity differs
    z_e = codes(trained, [a] * n, [strong] * n, [open_] * n, views)           # only the expression differs
    d_identity, d_expression = (z_a - z_b).norm(dim=-1), (z_a - z_e).norm(dim=-1)
    assert (d_identity < d_expression).all(), (d_identity, d_expression)
    assert d_identity.mean() < MARGIN * d_expression.mean(), (d_identity.mean(), d_expression.mean())


def test_untrained_encoder_fails_the_same_check(trained):
    "The check above can fail: the same architecture untrained puts identity at least as far as expression."
    head, n = trained['head'], 6
    views = ex.sample_views(n, seed=11, image_size=trained['tcfg'].image_size, view_range=trained['tcfg'].view_range)
    a, b = sample_identity(0, HELD_OUT[0]), sample_identity(0, HELD_OUT[1])
    calm, strong = expression(head), expression(head, blink_left=2.5, blink_right=2.5, smile=2.5, lips_part=2.)
    untrained = dict(trained, encoder=ex.build_encoder(trained['ecfg'], seed=1).eval())
    z_a = codes(untrained, [a] * n, [calm] * n, [torch.zeros(3)] * n, views)
    z_b = codes(untrained, [b] * n, [calm] * n, [torch.zeros(3)] * n, views)
    z_e = codes(untrained, [a] * n, [strong] * n, [torch.tensor([0.25, 0., 0.])] * n, views)
    assert (z_a - z_b).norm(dim=-1).mean() > MARGIN * (z_a - z_e).norm(dim=-1).mean()


def test_shapes(trained):
    enc, size = trained['encoder'], trained['tcfg'].image_size
    assert enc(torch.zeros(7, 3, 32, 32)).shape == (7, ex.EXPR_DIM)
    views = ex.sample_views(6, seed=3, image_size=size)
    e = ex.sample_expressions(6, seed=3)
    imgs, lms = ex.render_faces(trained['head'], [sample_identity(0, i) for i in HELD_OUT[:2] * 3], e['expression'], e['jaw'], views, size)
    video, lmv = imgs.reshape(2, 3, *imgs.shape[1:]).transpose(1, 2), lms.reshape(2, 3, 68, 2)     # (B, 3, T, H, W), (B, T, 68, 2)
    with torch.no_grad():
        z = enc.encode_frames(video, lmv, chunk=4)
        assert z.shape == (2, 3, ex.EXPR_DIM)
        torch.testing.assert_close(z.reshape(6, -1), enc(ex.crop_faces(imgs, lms, 32)))    # per frame, chunking aside
    le = ex.LandmarkEncoder(ex.LANDMARK_PRESETS['tiny'])
    assert le(ex.normalize_landmarks(lmv, size)).shape == (2, 3, 68, 32)
    pooled = ex.LandmarkEncoder(ex.LandmarkEncoderConfig(dim=32, heads=2, n_tokens=4))
    assert pooled(ex.normalize_landmarks(lmv, size)).shape == (2, 3, 4, 32)


def test_saved_weights_reload_identically(trained, tmp_path):
    enc, x = trained['encoder'], torch.randn(5, 3, 32, 32)
    ex.register_checkpoint('pytest-tiny', trained['folder'])
    try:
        with torch.no_grad():
            for loaded in (ex.load_checkpoint(trained['folder']), ex.load_expression_encoder('pytest-tiny'),
                           ex.load_expression_encoder(trained['folder'])):
                assert torch.equal(loaded(x), enc(x))
                assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
            assert torch.equal(ex.load_regressor(trained['folder'])(enc(x)), trained['regressor'](enc(x)))
    finally: ex.CHECKPOINTS.pop('pytest-tiny')
    cfg = ex.read_config(trained['folder'])
    assert cfg['preset'] == 'tiny' and cfg['encoder']['dim'] == ex.EXPR_DIM
    assert sorted(p.name for p in trained['folder'].iterdir()) == sorted([ex.CONFIG, ex.WEIGHTS, ex.REGRESSOR])


def test_same_seed_same_pool_and_encoder():
    ecfg, tcfg = ex.get_presets('tiny', pool_expressions=4, renders_per_expression=2, batch_expressions=2, steps=3)
    head = HeadModel(resolution=tcfg.head_resolution, n_shape=50, n_expr=tcfg.n_expr)
    p1, p2 = ex.make_pool(head, tcfg, 5, 'train'), ex.make_pool(head, tcfg, 5, 'train')
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not torch.equal(p1['images'], ex.make_pool(head, tcfg, 6, 'train')['images'])
    w1, w2 = (ex.fit(ecfg, tcfg, p1, seed=2)[0].state_dict() for _ in range(2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


class Codes(nn.Module):
    "A user's encoder: any module from crops to (B, 128)."
    def __init__(self, out: int = ex.EXPR_DIM):
        super().__init__(); self.lin = nn.Linear(3, out)
    def forward(self, x): return self.lin(x.mean((-2, -1)))


def test_user_encoders_plug_in(tmp_path):
    torch.jit.script(Codes()).save(str(tmp_path / 'codes.pt'))
    for spec in (Codes(), tmp_path / 'codes.pt'):
        enc = ex.load_expression_encoder(spec, crop_size=40, normalize='imagenet')
        assert isinstance(enc, ex.FaceEncoder) and enc(torch.zeros(2, 3, 40, 40)).shape == (2, ex.EXPR_DIM)
        assert enc.encode_frames(torch.zeros(1, 3, 2, 64, 64), _face().expand(1, 2, 68, 2)).shape == (1, 2, ex.EXPR_DIM)
    with pytest.raises(ValueError, match=r'module: expected expression codes of shape \(2, 128\).*got \(2, 64\)'):
        ex.PretrainedEncoder(Codes(64), crop_size=40)


def _face() -> torch.Tensor:
    "Landmarks (68, 2) of a frontal neutral face in a 64 px image."
    from portrait_nb.cameras import intrinsics_from_fov, look_at, project_points
    head = HeadModel(resolution='light')
    return project_points(head().landmarks, look_at((0., 0., 0.4)), intrinsics_from_fov(30., 64, 64))[0]


@pytest.mark.parametrize('call, message', [
    (lambda e: e(torch.zeros(2, 1, 32, 32)), r'crops: expected RGB \(B, 3, H, W\)'),
    (lambda e: e(torch.zeros(2, 3, 64, 64)), r'crops: expected 32x32 face crops'),
    (lambda e: e(torch.full((2, 3, 32, 32), float('nan'))), r'crops: expected finite values, found NaN'),
    (lambda e: e.encode_frames(torch.zeros(1, 4, 2, 64, 64), _face().expand(1, 2, 68, 2)), r'video: expected RGB'),
    (lambda e: e.encode_frames(torch.full((1, 3, 2, 64, 64), float('nan')), _face().expand(1, 2, 68, 2)), r'video: .*NaN'),
    (lambda e: e.encode_frames(torch.zeros(1, 3, 2, 64, 64), _face()[:51].expand(1, 2, 51, 2)), r'landmarks: expected 2D landmarks of shape \(\.\.\., 68, 2\)'),
    (lambda e: e.encode_frames(torch.zeros(1, 3, 2, 64, 64), _face().expand(1, 3, 68, 2)), r'landmarks: expected \(1, 2, 68, 2\)'),
    (lambda e: e.encode_frames(torch.zeros(1, 3, 2, 64, 64), torch.full((1, 2, 68, 2), float('nan'))), r'landmarks: .*NaN'),
    (lambda e: ex.crop_faces(torch.zeros(2, 3, 64, 64), _face().expand(3, 68, 2), 32), r'landmarks: expected \(2, 68, 2\)'),
    (lambda e: ex.LandmarkEncoder()(torch.zeros(1, 2, 68, 3)), r'landmarks: expected \(B, T, 68, 2\)'),
])
def test_bad_inputs_get_clear_errors(call, message):
    with pytest.raises(ValueError, match=message): call(ex.ExpressionEncoder(ex.ENCODER_PRESETS['tiny']))


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='is no registered name'): ex.load_expression_encoder(tmp_path / 'nothing-here')
    with pytest.raises(FileNotFoundError, match='expected a checkpoint with config.json'): ex.load_checkpoint(tmp_path)


def test_notebook_trains_and_writes_its_run(tmp_path):
    """The notebook through papermill with the tiny preset and a few steps. It runs from a copy without the closing
    `nbdev_export()` cell, which would re-export every notebook of the checkout."""
    nb = nbformat.read(ROOT / 'nbs' / '07_expression.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if 'nbdev_export()' not in c.source]
    src = tmp_path / '07_expression.ipynb'; nbformat.write(nb, src)
    run = tmp_path / 'run'
    pm.execute_notebook(src, tmp_path / 'out.ipynb', cwd=ROOT / 'nbs', kernel_name='portrait_nb', progress_bar=False,
                        parameters=dict(preset='tiny', out_dir=str(run), steps=30, seed=1, ablation=False))
    assert sorted(p.name for p in run.iterdir()) == sorted([ex.CONFIG, ex.WEIGHTS, ex.REGRESSOR, 'metrics.csv'])
    cfg = json.loads((run / ex.CONFIG).read_text())
    assert cfg['preset'] == 'tiny' and cfg['seed'] == 1 and cfg['train']['steps'] == 30
    assert set(cfg['metrics']) == {'expression_mae', 'named_mae', 'jaw_open_mae_deg', 'identity_probe', 'retrieval'}
    assert ex.load_expression_encoder(run)(torch.zeros(1, 3, 32, 32)).shape == (1, ex.EXPR_DIM)
