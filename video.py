"""Pose on the frames of a video (`python evaluate.py CKPT --video clip.mp4`): a labelled video,
the poses as json and as a DeepLabCut-layout CSV, and a trajectory figure.

Frames are decoded in a background thread and drawn and written in another, while the model runs
on batches of frames (predict.Predictor). Each frame's box: its `--boxes` entries when it has
any; else with --follow the box around the previous frame's pose (predict.box_around), searched
again (predict.search) when the pose's mean keypoint score falls below FOLLOW_MIN_SCORE; else
searched on every frame (the default), or the whole frame (--whole-frame). --follow runs frame
after frame, one crop per forward pass; the search ~50 window crops per frame (no flip test).
"""
import csv
import itertools
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import defaultdict

import cv2
import numpy as np
from tqdm import tqdm

import visualize
from files import atomic_file, write_json
from predict import (KEYPOINT_SCORE, Predictor, box_around, check_box, draw_context, find_poses,
                     keypoint_scores, read_box_list, rounded_list)

FOLLOW_MIN_SCORE = 0.3    # --follow: a pose whose keypoints score less on average is lost


# ----------------------------------------------------------------------------- input
def parse_frames(text):
    """--frames "A:B" (0-based, B excluded; "A:" to the end, ":B" from the start) -> (A, B or
    None). An empty or inverted range is an error naming the flag."""
    try:
        start, stop = text.split(":")  # a ValueError unless exactly one ':'
        start, stop = int(start or 0), int(stop) if stop else None
    except ValueError:
        raise ValueError(f"--frames {text}: expected START:STOP, e.g. 0:600, 100: or :600 "
                         f"(0-based frame numbers, STOP excluded)") from None
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"--frames {text}: the range is empty or inverted; give 0 <= START < STOP")
    return start, stop


def open_video(path):
    """-> (capture, fps (30 when the file states none), width, height, frame count as the
    container states it (0: unknown))."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video {path}: no such file")
    capture = cv2.VideoCapture(path)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not capture.isOpened() or width <= 0 or height <= 0:
        raise ValueError(f"--video {path}: OpenCV cannot decode this file (codec or format)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return capture, fps if math.isfinite(fps) and fps > 0 else 30.0, width, height, max(count, 0)


def frame_span(frames, count, path):
    """(start, stop or None) of --frames checked against the stated frame count -> the span to
    run; a stop past the end is clipped, and said."""
    start, stop = frames or (0, None)
    if count and start >= count:
        raise ValueError(f"--frames {start}:{'' if stop is None else stop}: {path} has "
                         f"{count} frames (0..{count - 1}); start inside the video")
    if count and stop is not None and stop > count:
        print(f"--frames {start}:{stop}: {path} has {count} frames; running {start}:{count}")
        stop = count
    return start, stop if stop is not None else count or None


def video_boxes(path, width, height, start, stop):
    """--boxes for a video: [{"frame": i (0-based), "bbox": [x, y, w, h], "score": s}, ...] ->
    {frame: [(bbox, score), ...]} for the frames in [start, stop); those outside are said."""
    boxes, outside = defaultdict(list), []
    for n, entry in enumerate(read_box_list(path)):
        frame = entry.get("frame")
        where = f"--boxes {path}, entry {n} (frame {frame!r})"
        if not (isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0):
            raise ValueError(f"{where}: 'frame' must be a 0-based integer frame number")
        box = check_box(entry, where, width, height)
        if frame < start or (stop is not None and frame >= stop):
            outside.append(frame)
        else:
            boxes[frame].append(box)
    if outside:
        print(f"--boxes {path}: {len(outside)} box(es) for frames outside the frames run "
              f"({start}:{'' if stop is None else stop}) not used (frames {min(outside)}.."
              f"{max(outside)})")
    return boxes


# ----------------------------------------------------------------------------- threads
class BackgroundReader:
    """Iterates `items` (a generator: decoding) in a thread, at most `depth` items ahead;
    iterating the reader yields them here and raises the thread's error."""

    def __init__(self, items, depth):
        self.queue, self.stop = queue.Queue(depth), threading.Event()
        self.error, self.done = None, False
        self.thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self.thread.start()

    def _run(self, items):
        try:
            for item in items:
                if self.stop.is_set():
                    break
                self.queue.put(item)
        except BaseException as e:  # handed to the main thread
            self.error = e
        finally:
            self.queue.put(None)

    def __iter__(self):
        while (item := self.queue.get()) is not None:
            yield item
        self.done = True
        if self.error is not None:
            raise self.error

    def close(self):
        """Stop early (an error in the main thread): unblock the thread and wait for it."""
        self.stop.set()
        while not self.done:
            self.done = self.queue.get() is None
        self.thread.join()


def read_frames(capture, start, stop):
    """(index, BGR frame) for the frames start..stop - 1 (to the end: stop None); frames
    before start are decoded and dropped (grab), as seeking is inexact in many codecs."""
    for _ in range(start):
        if not capture.grab():
            return
    for index in itertools.count(start) if stop is None else range(start, stop):
        ok, frame = capture.read()
        if not ok:
            return
        yield index, frame


def batches(items, size):
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


# ----------------------------------------------------------------------------- poses
def mean_score(pose):
    return float(pose["keypoints"][:, 2].mean())


def follow_poses(predictor, chunk, given, previous):
    """--follow over a chunk of (index, frame), one frame after the other -> (poses per frame,
    the last frame's best pose or None). previous: the best pose of the frame before."""
    out = []
    for index, frame in chunk:
        poses = None
        if index not in given and previous is not None and mean_score(previous) >= FOLLOW_MIN_SCORE:
            box = box_around(previous["keypoints"], previous["bbox"], frame.shape[1],
                             frame.shape[0])
            poses = find_poses(predictor, [frame], [[(box, 1.0)]], source="follow")[0]
            if mean_score(poses[0]) < FOLLOW_MIN_SCORE:  # lost: search this frame again
                poses = None
        if poses is None:
            poses = find_poses(predictor, [frame], [given.get(index)])[0]
        previous = max(poses, key=lambda p: p["score"]) if poses else None
        out.append(poses)
    return out, previous


# ----------------------------------------------------------------------------- outputs
def write_dlc_csv(path, scorer, names, records):
    """DeepLabCut's analyze_videos CSV: a frame column, header rows scorer / bodyparts / coords (+
    individuals when a frame holds several poses), x, y and likelihood (predict.keypoint_scores:
    the column keeps DeepLabCut's name, which its tools read) per body part; empty cells where a
    frame has fewer poses. records: [{"frame", "instances": [{"keypoints": (K, 3)}, ...]}]."""
    slots = max([len(r["instances"]) for r in records] + [1])
    columns = [(scorer, f"instance{n + 1}", name, coord) for n in range(slots) for name in names
               for coord in ("x", "y", "likelihood")]
    header = [[title, *cells] for title, cells in  # the columns' cells transposed into rows
              zip(("scorer", "individuals", "bodyparts", "coords"), zip(*columns))]
    if slots == 1:
        del header[1]  # one animal: DeepLabCut's single-animal layout, no individuals row
    with atomic_file(path, "w") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerows(header)
        for r in records:
            cells = []
            for pose in r["instances"]:
                for x, y, p in np.asarray(pose["keypoints"], np.float64).reshape(-1, 3):
                    cells += [f"{x:.2f}", f"{y:.2f}", f"{keypoint_scores(p):.4f}"]
            out.writerow([r["frame"]] + cells + [""] * (3 * len(names) * slots - len(cells)))


def write_trajectories(path, background, records, names, sides, pcutoff):
    """<stem>_trajectories.png: each keypoint's path (the best pose of each frame) over the frames
    run, drawn in its colour on the faded first frame (points scoring below pcutoff leave gaps),
    the names, and every keypoint's score over time with pcutoff as a grey line."""
    tracks = np.full((len(records), len(names), 3), np.nan)  # (T, K, 3), NaN: a frame without pose
    for t, r in enumerate(records):
        if r["instances"]:
            tracks[t] = max(r["instances"], key=lambda p: p["score"])["keypoints"]
    frames, colours = [r["frame"] for r in records], visualize.keypoint_colours(sides)
    scale = min(1.0, 800 / background.shape[1])
    canvas = cv2.resize(background, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = (0.35 * canvas + 0.65 * 255).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        sure = tracks[..., 2] >= pcutoff                                          # (T, K)
    for k, colour in enumerate(colours):
        points = [tuple(int(round(v)) for v in xy * scale) if ok else None
                  for xy, ok in zip(tracks[:, k, :2], sure[:, k])]
        cv2.polylines(canvas, visualize.gapped_lines(points), False, colour, 2, cv2.LINE_AA)
    legend = visualize.legend_strip(canvas.shape[1], 0.45, list(zip(names, colours)))
    panel = visualize.curve_panel(frames, [(tracks[:, k, 2], c) for k, c in enumerate(colours)],
                                  f"keypoint score (grey: --pcutoff {pcutoff:g})",
                                  (200, canvas.shape[1]), "frame", (0.0, 1.0), pcutoff)
    title = f"Keypoint paths, frames {frames[0]}-{frames[-1]} (the best pose of each frame)"
    visualize.write_image(path, visualize.titled(np.concatenate([canvas, legend, panel]), title))


class LabelledVideo:
    """The labelled video: draw(frame, poses) run and encoded (mp4v) in a background thread into
    a temporary file, renamed to `path` by finish(ok=True) once every frame is in; the thread's
    error is raised at the next put or at finish."""

    def __init__(self, path, fps, width, height, draw):
        self.path, self.tmp, self.draw = path, f"{path}.tmp.{os.getpid()}.mp4", draw
        self.video = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (width, height))
        if not self.video.isOpened():
            raise OSError(f"cannot write {path} (no mp4v encoder in this OpenCV?)")
        self.queue, self.error, self.written = queue.Queue(64), None, 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error keep draining, so that put never blocks
                try:
                    self.video.write(self.draw(*item))
                    self.written += 1
                except BaseException as e:
                    self.error = e

    def put(self, frame, poses):
        if self.error is not None:
            raise self.error
        self.queue.put((frame, poses))

    def finish(self, ok):
        """Wait for the last frames; keep the video (ok, and all its frames read back: OpenCV's
        writer says nothing of a full disk or a file size limit) or remove it (a failed run)."""
        try:
            self.queue.put(None)
            self.thread.join()
            if self.error is not None:
                raise self.error
        except BaseException:
            ok = False
            raise
        finally:
            self.video.release()
            complete = ok and frame_count(self.tmp) == self.written
            if complete:
                os.replace(self.tmp, self.path)
            elif os.path.exists(self.tmp):
                os.remove(self.tmp)
        if ok and not complete:
            raise OSError(f"cannot write {self.path} (disk full or a file size limit?)")


def frame_count(path):
    """The frames a video file states it holds (-1: OpenCV cannot open it)."""
    capture = cv2.VideoCapture(path)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else -1
    capture.release()
    return count


def pose_frames(predictor, capture, span, given, mode, writer):
    """The model over the frames of `span` (start, stop or None), decoded in a background thread,
    each frame with its poses handed to `writer`; mode "search", "follow" or "whole" ->
    ([{"frame", "instances"}], the first frame: the trajectory figure's background)."""
    reader = BackgroundReader(read_frames(capture, *span), depth=2 * predictor.batch_size)
    records, previous, first = [], None, None
    total = span[1] - span[0] if span[1] else None
    with tqdm(total=total, unit="frame", disable=not sys.stderr.isatty()) as bar:
        try:
            for chunk in batches(reader, predictor.batch_size):
                if mode == "follow":  # frame after frame; the next chunk starts from `previous`
                    poses, previous = follow_poses(predictor, chunk, given, previous)
                else:  # "search" or "whole": the chunk's frames in batches
                    poses = find_poses(predictor, [frame for _, frame in chunk],
                                       [given.get(i) for i, _ in chunk], mode == "whole")
                for (index, frame), instances in zip(chunk, poses):
                    writer.put(frame, instances)
                    records.append({"frame": index, "instances": instances})
                first = chunk[0][1] if first is None else first
                bar.update(len(chunk))
        finally:
            reader.close()
    return records, first


# ----------------------------------------------------------------------------- the run
def interrupt(signum, frame):
    raise KeyboardInterrupt


def analyze_video(predictor, ckpt, path, out_dir, frames=None, boxes=None, mode="search",
                  pcutoff=0.4, names_on=False):
    """Pose on the frames `frames` ((A, B or None), None: all) of the video `path` -> the files of
    run_video; returns {"frames", "seconds", "stem"}."""
    capture, fps, width, height, count = open_video(path)
    start, stop = frame_span(frames, count, path)
    given = video_boxes(boxes, width, height, start, stop) if boxes else {}
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    style = draw_context(ckpt, names_on)

    def draw(frame, poses):
        return visualize.overlay(frame, [p["keypoints"] for p in poses], style["skeleton"],
                                 style["sides"], pcutoff, names=style["names"], legend=False,
                                 boxes=[p["bbox"] for p in poses])

    began, records, video = time.perf_counter(), None, None
    # a stop by `kill` or a job scheduler (SIGTERM) unwinds as Ctrl-C does, through the finally
    terminate = signal.signal(signal.SIGTERM, interrupt)
    try:
        video = LabelledVideo(stem + "_pose.mp4", fps, width, height, draw)
        records, first = pose_frames(predictor, capture, (start, stop), given, mode, video)
    finally:  # an interrupted or failed run leaves no video behind
        signal.signal(signal.SIGTERM, terminate)
        if video is not None:
            video.finish(ok=bool(records))
        capture.release()
    seconds = time.perf_counter() - began
    if not records:
        raise ValueError(f"--video {path}: no frame could be decoded from frame {start} on "
                         f"(the file states {count} frames)")
    if stop is not None and records[-1]["frame"] + 1 < stop:
        print(f"--video {path}: the video ended after frame {records[-1]['frame']}, before "
              f"frame {stop} (its header states {count} frames)")
    names = list(ckpt["keypoint_names"])
    predictions = [{"frame": r["frame"], "instances": [
        {**p, "keypoints": rounded_list(p["keypoints"])} for p in r["instances"]]} for r in records]
    write_json(stem + "_keypoints.json", {
        "video": os.path.abspath(path), "fps": fps, "width": width, "height": height,
        "frames": len(records), "box_mode": mode, "keypoint_names": names,
        "keypoint_score": KEYPOINT_SCORE, "skeleton": ckpt["skeleton"], "predictions": predictions})
    cfg = ckpt["model_config"]
    write_dlc_csv(stem + "_keypoints.csv", f"PromptPose_{cfg['backbone']}_{cfg['method']}",
                  names, records)
    write_trajectories(stem + "_trajectories.png", first, records, names, style["sides"], pcutoff)
    return {"frames": len(records), "seconds": seconds, "stem": stem}


def run_video(model, ckpt, args, flip, device, out_dir):
    """Pose on the frames of --video -> <stem>_pose.mp4 (same size and fps, poses and boxes drawn),
    <stem>_keypoints.json (per frame its instances: bbox, box (how it was found), score, flat
    keypoints), <stem>_keypoints.csv (DeepLabCut's layout) and <stem>_trajectories.png."""
    mode = "follow" if args.follow else "whole" if args.whole_frame else "search"
    predictor = Predictor.from_checkpoint(model, ckpt, flip, args.amp, device, args.batch_size)
    frames = parse_frames(args.frames) if args.frames else None
    run = analyze_video(predictor, ckpt, args.video, out_dir, frames, args.boxes, mode,
                        args.pcutoff, args.vis_names)
    stem = run["stem"]
    print(f"{run['frames']} frames in {run['seconds']:.1f} s ({run['frames'] / run['seconds']:.1f}"
          f" frames/s, boxes: {'--boxes, then ' if args.boxes else ''}{mode}, batch "
          f"{args.batch_size}) -> {stem}_pose.mp4, {stem}_keypoints.json, {stem}_keypoints.csv, "
          f"{stem}_trajectories.png")
