"""Writes pick_a_pic_sample.parquet: Pick-a-Pic v2 style rows (the published column names) whose image bytes are
real images from examples/data/images. Captions and labels are written by hand (not real Pick-a-Pic data).
Run from the repository root: python tests/data/make_pick_a_pic.py"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
IMAGES = HERE.parent.parent / "examples" / "data" / "images"
ROWS = [  # caption, image 0, image 1, label_0, label_1
    ("a rocket on the launch pad", "rocket.jpg", "horse.png", 1.0, 0.0),
    ("a wall clock", "coins.png", "clock.png", 0.0, 1.0),
    ("a microscope image of cells", "cell.png", "retina.jpg", 0.5, 0.5),
]


def main() -> None:
    cols = {k: [] for k in ("are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                            "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1",
                            "model_0", "model_1", "ranking_id", "user_id", "num_example_per_prompt")}
    for i, (caption, a, b, l0, l1) in enumerate(ROWS):
        uid0, uid1 = f"uid-{i}-0", f"uid-{i}-1"
        cols["are_different"].append(True)
        cols["best_image_uid"].append(uid0 if l0 == 1 else uid1 if l1 == 1 else "")
        cols["caption"].append(caption)
        cols["created_at"].append("2023-05-01 12:00:00")
        cols["has_label"].append(True)
        cols["image_0_uid"].append(uid0)
        cols["image_0_url"].append(f"images/{a}")
        cols["image_1_uid"].append(uid1)
        cols["image_1_url"].append(f"images/{b}")
        cols["jpg_0"].append((IMAGES / a).read_bytes())
        cols["jpg_1"].append((IMAGES / b).read_bytes())
        cols["label_0"].append(l0)
        cols["label_1"].append(l1)
        cols["model_0"].append("stable-diffusion-xl")
        cols["model_1"].append("stable-diffusion-2-1")
        cols["ranking_id"].append(1000 + i)
        cols["user_id"].append(7)
        cols["num_example_per_prompt"].append(1)
    pq.write_table(pa.table(cols), HERE / "pick_a_pic_sample.parquet")


if __name__ == "__main__":
    main()
