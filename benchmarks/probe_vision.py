"""Linear probes on the tiny trained model's vision output: does each merged token know its colour, shape, x?

    python benchmarks/probe_vision.py CHECKPOINT_FOLDER [N_PICTURES]

Pictures come from a stream (seed 777) used by neither training nor evaluation. Each merged token
(a 32x32 px block of the processed picture) is labelled with the shape kind and colour covering most
of it (background if fewer than 40 px), and its x centre in [0, 1]. Logistic probes (shape, colour)
and a least-squares probe (x) are fitted on 70 % of the tokens and scored on the rest; printed as
(accuracy on all tokens, accuracy on shape tokens) and R^2. docs/trained_model.md has the figures.
"""
import sys, torch, random
from pathlib import Path
from PIL import Image, ImageDraw
from builder_qwen3vl.shipped import shapes_task
from builder_qwen3vl.shipped.shapes_task import draw_shape
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the evaluation code is not in the wheel
from tiny_model import evaluate
from tiny_model.encoding import Encoder
torch.set_num_threads(1)
ck = Path(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 600
model = evaluate.load_hf(ck); enc = Encoder.for_checkpoint(ck)
KIND = {k: i + 1 for i, k in enumerate(shapes_task.SHAPES)}
COL = {c: i + 1 for i, c in enumerate(shapes_task.COLOURS)}
feats = {"merger": [], "ds0": [], "ds1": [], "ds2": []}
ys_kind, ys_col, xs = [], [], []
for i in range(n):
    rng = random.Random(777 * 1_000_003 + i)
    image, shapes = shapes_task.make_scene(rng)
    px = enc.image_processor(images=[image], return_tensors="pt")
    t, h, w = px["image_grid_thw"][0].tolist()
    with torch.no_grad():
        out = model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
    feats["merger"].append(out.pooler_output)
    for j, d in enumerate(out.deepstack_features):
        feats[f"ds{j}"].append(d)
    H, W = h * 16, w * 16
    # Label masks drawn by the task's own drawing (one shape per layer; every task colour has all channels > 0).
    masks = {"kind": torch.zeros(H, W, dtype=torch.long), "col": torch.zeros(H, W, dtype=torch.long)}
    for s in shapes:
        layer = Image.new("RGB", image.size, (0, 0, 0))
        draw_shape(ImageDraw.Draw(layer), s)
        covered = torch.tensor(list(layer.convert("L").resize((W, H), Image.NEAREST).getdata())).view(H, W) > 0
        masks["kind"][covered] = KIND[s.kind]
        masks["col"][covered] = COL[s.colour]
    for r in range(h // 2):
        for c in range(w // 2):
            blk = masks["kind"][r*32:(r+1)*32, c*32:(c+1)*32].flatten()
            cblk = masks["col"][r*32:(r+1)*32, c*32:(c+1)*32].flatten()
            nz = blk[blk > 0]
            ys_kind.append(int(nz.mode().values) if len(nz) > 40 else 0)
            ncz = cblk[cblk > 0]
            ys_col.append(int(ncz.mode().values) if len(ncz) > 40 else 0)
            xs.append((c + 0.5) / (w // 2))
yk = torch.tensor(ys_kind); yc = torch.tensor(ys_col); x = torch.tensor(xs)
print("tokens", len(yk), "kind dist", torch.bincount(yk).tolist())
def probe(X, y, classes):
    X = (X - X.mean(0)) / (X.std(0) + 1e-5)
    cut = int(0.7 * len(y))
    lin = torch.nn.Linear(X.shape[1], classes); opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(500):
        opt.zero_grad(); torch.nn.functional.cross_entropy(lin(X[:cut]), y[:cut]).backward(); opt.step()
    with torch.no_grad():
        te = (lin(X[cut:]).argmax(-1) == y[cut:])
        mask = y[cut:] > 0
        return te.float().mean().item(), te[mask].float().mean().item()
def regress(X, y):
    X = (X - X.mean(0)) / (X.std(0) + 1e-5); X = torch.cat([X, torch.ones(len(X), 1)], 1)
    cut = int(0.7 * len(y)); sol = torch.linalg.lstsq(X[:cut], y[:cut, None]).solution
    pred = (X[cut:] @ sol)[:, 0]; return 1 - ((pred - y[cut:]) ** 2).mean().item() / y[cut:].var().item()
for name, f in feats.items():
    X = torch.cat(f)
    print(f"{name:7s} kind acc all/on-shape {probe(X, yk, 4)}  colour {probe(X, yc, 5)}  x R2 {regress(X, x):.3f}")
