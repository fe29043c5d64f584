"""Export a checkpoint as one file that torch alone loads and runs, with no code of this project.

    python export.py runs/openfield/final.pt --output openfield.pt2

    import json, torch
    extra = {"keypoints.json": ""}
    m = torch.export.load("openfield.pt2", extra_files=extra).module()
    info = json.loads(extra["keypoints.json"])     # keypoint_names, flip_pairs, skeleton, ...
    poses = m(image, boxes)  # uint8 (H, W, 3) RGB, float (N, 4) [x, y, w, h] -> (N, K, 3)

The file is a `torch.export` program (.pt2), not TorchScript: torch.jit.script / trace are
deprecated in the torch this project runs on (they warn so), tracing would freeze the number
of boxes and the image size, and scripting cannot read the model code. torch.export keeps N, H
and W symbolic, checks the graph as it traces it, and loads with torch alone.

Inside the program, as evaluate.py does it with numpy and OpenCV (transforms.py): the box to
a crop (clipped, filled to the input's aspect ratio, x1.25, bilinear with a black border as
cv2.warpAffine), normalised, the model on the crop and its mirror (flip test), Eq. 1 decoding,
back to the image; then, as predict.py clips own photos' and videos' keypoints (evaluate.py
scores a json's unclipped), x to [0, W - 1] and y to [0, H - 1] of the image. The crop samples
where OpenCV does, but in float32 where OpenCV rounds to 1/32 px: keypoints agree to a small
fraction of a pixel, except where two maxima almost tie.
"""
import argparse
import json
import os
import warnings

import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint, model_from_checkpoint
from distributed import HelpFormatter, run_cli
from files import atomic_file
from transforms import BOX_PADDING, NORMALIZATION, flip_permutation

METADATA_FILE = "keypoints.json"  # the name of the metadata inside the .pt2 (extra_files)


def box_center_scale(boxes, aspect_ratio, width, height):
    """dataset.clip_box + transforms.box_to_center_scale: boxes (N, 4) [x, y, w, h] in a width x
    height image -> center, scale (N, 2), filled to `aspect_ratio` (w / h), then x BOX_PADDING."""
    x, y = boxes[:, 0].clamp(min=0), boxes[:, 1].clamp(min=0)
    w = (boxes[:, 0] + boxes[:, 2]).clamp(max=width) - x
    h = (boxes[:, 1] + boxes[:, 3]).clamp(max=height) - y
    center = torch.stack([x + 0.5 * w, y + 0.5 * h], 1)
    wide = w > aspect_ratio * h
    size = torch.stack([torch.where(wide, w, h * aspect_ratio),
                        torch.where(wide, w / aspect_ratio, h)], 1)
    return center, size * BOX_PADDING


def crop(image, center, scale, size):
    """Crops (N, 3, H, W) float of image (3, Hi, Wi) float: output pixel (u, v) shows image
    point center + ((u, v) - (W, H) / 2) * scale / (W, H), bilinear, 0 outside (the inverse of
    transforms.get_affine_transform with rotation 0, as cv2.warpAffine samples it)."""
    (H, W), (Hi, Wi) = size, image.shape[1:]
    u = torch.arange(W, dtype=torch.float32, device=image.device)
    v = torch.arange(H, dtype=torch.float32, device=image.device)
    x = center[:, :1] + (u[None] - W / 2) * (scale[:, :1] / W)                # (N, W)
    y = center[:, 1:] + (v[None] - H / 2) * (scale[:, 1:] / H)                # (N, H)
    # grid_sample with align_corners=True puts pixel i's centre at -1 + 2 i / (size - 1)
    gx = (2 * x / (Wi - 1) - 1)[:, None, :].expand(-1, H, -1)                # (N, H, W)
    gy = (2 * y / (Hi - 1) - 1)[:, :, None].expand(-1, -1, W)                # (N, H, W)
    grid = torch.stack([gx, gy], -1)                                          # (N, H, W, 2)
    source = image[None].expand(center.shape[0], -1, -1, -1)                  # (N, 3, Hi, Wi)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def flip_back(heatmaps, permutation):
    """transforms.flip_back_heatmaps (with its one-pixel shift): heatmaps (N, K, h, w) of
    mirrored crops -> the unmirrored frame, left/right channels swapped."""
    out = heatmaps.flip(3)[:, permutation]
    return torch.cat([out[..., :1], out[..., :-1]], dim=3)


def decode(heatmaps, center, scale):
    """transforms.keypoints_from_heatmaps (Eq. 1): heatmaps (N, K, h, w) -> (N, K, 3) [x, y,
    score] in image pixels: argmax, a quarter-pixel step toward the higher neighbour where
    1 < x < w - 1 and 1 < y < h - 1 (the authors' rule); scores clipped to [0, 1] as output."""
    N, K, h, w = heatmaps.shape
    flat = heatmaps.reshape(N, K, h * w)
    maxvals, index = flat.max(2)                                              # (N, K)
    x, y = index % w, torch.div(index, w, rounding_mode="floor")

    def at(xx, yy):
        return flat.gather(2, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))[..., None])[..., 0]

    inside = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
    dx = torch.where(inside, torch.sign(at(x + 1, y) - at(x - 1, y)), 0.0)
    dy = torch.where(inside, torch.sign(at(x, y + 1) - at(x, y - 1)), 0.0)
    coords = torch.stack([x + 0.25 * dx, y + 0.25 * dy], -1)                  # (N, K, 2)
    size = torch.tensor([w, h], dtype=torch.float32, device=heatmaps.device)
    points = coords * scale[:, None] / size + center[:, None] - scale[:, None] / 2
    return torch.cat([points, maxvals.clamp(0, 1)[..., None]], -1)


class ExportedPose(torch.nn.Module):
    """m(image uint8 (H, W, 3) RGB, boxes float (N, 4) [x, y, w, h]) -> (N, K, 3) [x, y,
    score] in image pixels, clipped to the image as predict.py: crop, normalisation, flip test
    and decoding inside."""

    def __init__(self, model, image_size, normalize, flip_pairs, flip):
        super().__init__()
        self.model, self.image_size, self.flip = model.eval(), tuple(image_size), flip
        mean, std = NORMALIZATION[normalize]
        self.register_buffer("mean", 255 * torch.tensor(mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(std).reshape(1, 3, 1, 1))
        K = len(model.keypoint_names)
        self.register_buffer("permutation", torch.as_tensor(flip_permutation(K, flip_pairs)))

    @torch.no_grad()  # outputs without autograd history; the model's cached prompts apply
    def forward(self, image, boxes):
        H, W = self.image_size
        center, scale = box_center_scale(boxes.float(), W / H, image.shape[1], image.shape[0])
        pixels = image.permute(2, 0, 1).float()                                # (3, Hi, Wi)
        crops = (crop(pixels, center, scale, (H, W)) - self.mean) / self.std   # (N, 3, H, W)
        heatmaps = self.model(crops)["heatmaps"].float()
        if self.flip:
            mirrored = self.model(crops.flip(3))["heatmaps"].float()
            heatmaps = 0.5 * (heatmaps + flip_back(mirrored, self.permutation))
        poses = decode(heatmaps, center, scale)
        return clip_to_image(poses, image.shape[1], image.shape[0])


def clip_to_image(poses, width, height):
    """predict.find_poses's clipping: x to [0, width - 1], y to [0, height - 1] (a point in the
    crop's black border goes to the image's edge); width and height symbolic when exported."""
    x, y = poses[..., 0].clamp(0, width - 1), poses[..., 1].clamp(0, height - 1)
    return torch.stack([x, y, poses[..., 2]], -1)


def metadata(ckpt, flip):
    """What the file carries besides the program (METADATA_FILE)."""
    cfg = ckpt["model_config"]
    return {"keypoint_names": list(ckpt["keypoint_names"]), "flip_pairs": ckpt["flip_pairs"],
            "skeleton": ckpt["skeleton"], "sigmas": ckpt["sigmas"], "flip_test": flip,
            "input_size": list(cfg["image_size"]), "backbone": cfg["backbone"],
            "method": cfg["method"], "inputs": "image uint8 (H, W, 3) RGB, boxes float32 (N, 4) "
            "[x, y, w, h] in pixels, N >= 1", "output": "(N, K, 3) x, y, score in image pixels, "
            "x, y clipped to the image"}


def export(ckpt, flip=True, device="cpu"):
    """The checkpoint's model as an ExportedProgram with N boxes, H and W symbolic."""
    model = model_from_checkpoint(ckpt).to(device).eval()
    flip = flip and len(ckpt["flip_pairs"]) > 0
    module = ExportedPose(model, ckpt["model_config"]["image_size"],
                          ckpt["model_config"]["normalize"], ckpt["flip_pairs"], flip).to(device)
    image = torch.zeros(240, 320, 3, dtype=torch.uint8, device=device)
    boxes = torch.tensor([[10.0, 20, 100, 80], [50, 40, 60, 90]], device=device)
    dims = {"image": (torch.export.Dim("height", min=2), torch.export.Dim("width", min=2),
                      torch.export.Dim.STATIC),
            "boxes": (torch.export.Dim("boxes", min=1), torch.export.Dim.STATIC)}
    if model.prompt_learner is not None:  # PromptPose; a SimpleBaseline has no text side
        with torch.no_grad():  # the text side depends on no input: a constant of the program
            model.fixed_prompts = model.encode_prompts()
    return torch.export.export(module, (image, boxes), dynamic_shapes=dims), flip


def save(program, info, path):
    """The program and its metadata (METADATA_FILE) in one .pt2 file, written atomically."""
    try:
        with atomic_file(path) as f, warnings.catch_warnings():
            # torch's archive writer says this of weights sharing one storage; they are on
            # the export device and load back intact (tests/test_predict.py reloads the file)
            warnings.filterwarnings("ignore", message="No complete tensor found")
            torch.export.save(program, f, extra_files={METADATA_FILE: json.dumps(info)})
    except OSError as e:
        raise OSError(f"--output {path}: cannot write it ({e.strerror or e})") from None


def get_args_parser():
    p = argparse.ArgumentParser("Export a checkpoint for torch alone",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of train.py (final.pt, best.pt)")
    p.add_argument("--output", required=True, help="the file to write (.pt2)")
    p.add_argument("--no-flip-test", dest="flip_test", action="store_false",
                   help="leave the flip test out (half the cost; default: in, as evaluate.py)")
    p.add_argument("--device", default="cpu", help="the device the program will run on")
    return p


def main(args):
    ckpt = load_checkpoint(args.checkpoint)
    program, flip = export(ckpt, args.flip_test, args.device)
    info = metadata(ckpt, flip)
    save(program, info, args.output)
    print(f"{args.output}: torch.export program ({os.path.getsize(args.output) / 2**20:.1f} MiB), "
          f"{len(info['keypoint_names'])} keypoints, flip test {'on' if flip else 'off'}, "
          f"{args.device}; load it with torch.export.load(path, extra_files="
          f"{{'{METADATA_FILE}': ''}}).module()")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args)
