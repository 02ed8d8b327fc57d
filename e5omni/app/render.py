"""HTML of the page's result grid and status line. Every value from the corpus or the user is escaped here.

The grid is the value of a `gr.HTML` whose template is the default `${value}`: gradio substitutes the value into its
template as data, so a document whose text holds `${...}`, `{{...}}` or markup shows as that text (tested in the
browser). Media are referenced by row number (`e5omni/media/ROW/KIND`), never by path (see `e5omni.app.media`).
"""

from __future__ import annotations

from html import escape

from e5omni.app.engine import Outcome
from e5omni.app.media import MediaStore

SNIPPET_CHARS = 320
MEDIA_PREFIX = "e5omni"  # relative: works behind a proxy that serves the page under a sub-path


def _e(value) -> str:
    return escape(str(value), quote=True)


def _chips(modalities: list[str]) -> str:
    return "".join(f'<span class="e5-chip e5-chip-{_e(m)}">{_e(m)}</span>' for m in modalities)


def _media(store: MediaStore, row: int, rid: str) -> str:
    entry = store.entry(row)
    parts = []
    if "image" in entry.files:
        parts.append(f'<img class="e5-thumb" src="{MEDIA_PREFIX}/thumb/{row}" alt="{_e(rid)}" loading="lazy">')
    if "video" in entry.files:
        parts.append(
            f'<video class="e5-video" controls preload="none" poster="{MEDIA_PREFIX}/poster/{row}" '
            f'src="{MEDIA_PREFIX}/media/{row}/video"></video>'
        )
    if "audio" in entry.files:
        parts.append(
            f'<div class="e5-audio-box"><span class="e5-wave">♪</span>'
            f'<audio class="e5-audio" controls preload="none" src="{MEDIA_PREFIX}/media/{row}/audio"></audio></div>'
        )
    if entry.text is not None:
        text = entry.text.strip()
        short = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
        parts.append(f'<p class="e5-snippet">{_e(short)}</p>')
    if not parts:
        parts.append('<p class="e5-missing">no preview: the item is not in the corpus source</p>')
    return "".join(parts)


def results_html(outcome: Outcome, store: MediaStore) -> str:
    if outcome.error:
        return '<div class="e5-empty">Nothing searched: fix the query above.</div>'
    if not outcome.results:
        return '<div class="e5-empty">No results (nothing in the index matches the filter).</div>'
    cards = []
    for r in outcome.results:
        row = store.row_of(r.id, r.source)
        media = _media(store, row, r.id) if row is not None else '<p class="e5-missing">no preview</p>'
        calibrated = "" if r.calibrated is None else f"{r.calibrated:.2f}"
        more = (
            f'<button class="e5-more" type="button" data-more="{row}" title="search with this item">More like this</button>'
            if row is not None and store.entry(row).available
            else ""
        )
        cards.append(
            f'<article class="e5-card" data-rank="{r.rank}" data-id="{_e(r.id)}" data-score="{r.score:.6f}" '
            f'data-calibrated="{calibrated}" data-modalities="{_e("+".join(r.modalities))}">'
            f'<div class="e5-media">{media}</div>'
            f'<div class="e5-meta"><span class="e5-rank">#{r.rank}</span>'
            f'<span class="e5-score" title="cosine similarity">cos {r.score:.4f}</span>'
            f'<span class="e5-cal" title="calibrated score: cos / tau(q, d), the model\'s training logit">'
            f"cal {calibrated}</span></div>"
            f'<div class="e5-id" title="{_e(r.id)}">{_e(r.id)}</div>'
            f'<div class="e5-foot">{_chips(r.modalities)}{more}</div>'
            "</article>"
        )
    return f'<div class="e5-grid">{"".join(cards)}</div>'


def status_html(outcome: Outcome, size: int) -> str:
    if outcome.error:
        return (
            f'<div class="e5-status e5-error" role="alert"><strong>Could not search.</strong> {_e(outcome.error)}</div>'
        )
    ms = outcome.seconds * 1000
    deeper = f", ranked {outcome.searched:,} to fill the filter" if outcome.searched > len(outcome.results) else ""
    return (
        f'<div class="e5-status"><span class="e5-qlabel">Query</span>{_chips(outcome.query_modalities)}'
        f'<span class="e5-qtext">{_e(outcome.query_label)}</span>'
        f'<span class="e5-latency" data-ms="{ms:.1f}">{len(outcome.results)} results from {size:,} items '
        f"in {ms:.0f} ms{deeper}</span></div>"
    )


def header_html(title: str, model_name: str, size: int, counts: dict[str, int], dimension: int, kind: str) -> str:
    mix = " · ".join(f"{n:,} {m}" for m, n in counts.items() if n)
    return (
        f'<div class="e5-header"><div><h1>{_e(title)}</h1>'
        f"<p>Type a sentence, drop an image, a sound or a clip (or several at once: one mixed query), "
        f"and see the closest items of the index. Click a result to search with it.</p></div>"
        f'<dl class="e5-facts"><div><dt>model</dt><dd title="{_e(model_name)}">{_e(model_name)}</dd></div>'
        f"<div><dt>index</dt><dd>{size:,} items · {dimension}-d · {_e(kind)}</dd></div>"
        f"<div><dt>contents</dt><dd>{_e(mix) or '-'}</dd></div></dl></div>"
    )


CSS = """
.gradio-container { max-width: 1280px !important; }
.e5-header { display: flex; justify-content: space-between; align-items: flex-start; gap: 24px; margin: 4px 0 8px; }
.e5-header h1 { font-size: 1.6rem; font-weight: 700; margin: 0 0 4px; }
.e5-header p { margin: 0; color: var(--body-text-color-subdued); max-width: 640px; }
.e5-facts { display: grid; grid-template-columns: auto; gap: 2px; margin: 0; font-size: .85rem; min-width: 280px; }
.e5-facts div { display: flex; gap: 8px; }
.e5-facts dt { color: var(--body-text-color-subdued); width: 64px; }
.e5-facts dd { margin: 0; font-weight: 600; max-width: 300px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.e5-status { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; padding: 10px 14px; border-radius: 10px;
  background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); font-size: .95rem; }
.e5-error { background: #fdecec; border-color: #f2a7a7; color: #8a1c1c; }
.e5-qlabel { font-weight: 600; }
.e5-qtext { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-width: 420px; }
.e5-latency { margin-left: auto; color: var(--body-text-color-subdued); }
.e5-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(196px, 1fr)); gap: 14px; margin-top: 12px; }
.e5-card { display: flex; flex-direction: column; gap: 6px; padding: 10px; border-radius: 12px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-primary);
  box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.e5-media { display: flex; flex-direction: column; gap: 6px; min-height: 60px; }
.e5-thumb, .e5-video { width: 100%; aspect-ratio: 4 / 3; object-fit: cover; border-radius: 8px; background: #111; }
.e5-thumb { image-rendering: pixelated; }
.e5-audio-box { display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 6px;
  aspect-ratio: 4 / 3; border-radius: 8px; background: linear-gradient(135deg, #e0e7ff, #f5f3ff); }
.e5-wave { font-size: 2.4rem; color: #4f46e5; }
.e5-audio { width: 95%; height: 36px; }
.e5-snippet { margin: 0; font-size: .9rem; line-height: 1.35; max-height: 7.5em; overflow: hidden;
  overflow-wrap: anywhere; white-space: pre-wrap; }
.e5-missing, .e5-empty { color: var(--body-text-color-subdued); font-style: italic; }
.e5-empty { padding: 24px; text-align: center; }
.e5-meta { display: flex; gap: 8px; align-items: baseline; font-variant-numeric: tabular-nums; font-size: .82rem;
  white-space: nowrap; }
.e5-rank { font-weight: 700; font-size: 1rem; }
.e5-cal { color: var(--body-text-color-subdued); }
.e5-id { font-size: .8rem; color: var(--body-text-color-subdued); overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.e5-foot { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.e5-chip { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: .75rem; font-weight: 600;
  background: #eef2ff; color: #3730a3; }
.e5-chip-image { background: #ecfdf5; color: #065f46; }
.e5-chip-audio { background: #fff7ed; color: #9a3412; }
.e5-chip-video { background: #fdf2f8; color: #9d174d; }
.e5-more { margin-left: auto; font-size: .78rem; padding: 2px 10px; border-radius: 8px; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--button-secondary-background-fill); }
.e5-more:hover { background: var(--button-secondary-background-fill-hover); }
"""

#: Clicks on "More like this" (event delegation: the grid's content is replaced on every search).
GRID_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('[data-more]');
  if (button) { trigger('click', {row: Number(button.dataset.more)}); }
});
"""
