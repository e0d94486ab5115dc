"""Fork and join: parallel branches with async actions, joined per instance.

``received >> (text, images)`` forks one token into two branches whose async actions run at the same time;
``(text_checked, images_resized) >> published`` joins them. Several instances run at once with branch
delays chosen so that their branches finish interleaved; the join still only combines tokens of the same
instance, so every article is published with its own text and its own images.

    python examples/fork_join.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from circuit_breaker import Engine, InstanceStatus, Token, Workflow

DELAY = 0.05  # seconds per delay step of a branch

wf = Workflow("fork_join")
received, text, images, text_checked, images_resized, published = wf.states(
    "received", "text", "images", "text_checked", "images_resized", "published"
)

wf.flow(received >> (text, images), "split")


@wf.flow(text >> text_checked, "check_text")
async def check_text(token: Token) -> dict[str, Any]:
    await asyncio.sleep(DELAY * token.data["text_delay"])
    return {"words": len(token.data["body"].split())}


@wf.flow(images >> images_resized, "resize_images")
async def resize_images(token: Token) -> dict[str, Any]:
    await asyncio.sleep(DELAY * token.data["image_delay"])
    return {"thumbnails": [f"{name}.thumb.jpg" for name in token.data["images"]]}


@wf.flow((text_checked, images_resized) >> published, "publish")
def publish(token: Token) -> dict[str, Any]:
    """Sees the data of both branches merged: words from one, thumbnails from the other."""
    return {"summary": f"{token.data['slug']}: {token.data['words']} words, {len(token.data['thumbnails'])} images"}


async def main() -> None:
    articles = [
        {
            "slug": f"article-{i}",
            "body": " ".join(["word"] * (10 * (i + 1))),
            "images": [f"img{i}-{j}" for j in range(i + 1)],
            # Opposite orders: early articles finish their text last, late ones their images last.
            "text_delay": 5 - i,
            "image_delay": i + 1,
        }
        for i in range(5)
    ]
    async with Engine() as engine:
        began = time.perf_counter()
        started = await asyncio.gather(*(engine.start(wf, data) for data in articles))
        done = await asyncio.gather(*(engine.wait(inst.id, timeout=10) for inst in started))
        elapsed = time.perf_counter() - began

    sequential = DELAY * sum(a["text_delay"] + a["image_delay"] for a in articles)
    for article, inst in zip(articles, done, strict=True):
        if inst.status is not InstanceStatus.COMPLETED or inst.places != ["published"]:
            raise SystemExit(f"{article['slug']} ended {inst.status} in {inst.places}")
        i = articles.index(article)
        expected = f"article-{i}: {10 * (i + 1)} words, {i + 1} images"
        if inst.data["summary"] != expected:
            raise SystemExit(f"join mixed up instances: {inst.data['summary']!r} != {expected!r}")
        print(inst.data["summary"])
    print(
        f"{len(done)} instances forked and joined in {elapsed:.2f}s (the branches one after another: {sequential:.2f}s)"
    )
    print("every join combined tokens of its own instance")


if __name__ == "__main__":
    asyncio.run(main())
