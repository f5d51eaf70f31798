"""How it works: the U-Net drawn from the loaded model, live feature maps of the current scan, the loss."""

import numpy as np
import streamlit as st

from mriseg.app import webapp
from mriseg.app.explain import (
    DIAGRAM_FONT_SIZE,
    PRESENTER_DIAGRAM_FONT_SIZE,
    architecture_dot,
    describe,
    member_normalization,
)
from mriseg.app.visualize import display_image
from mriseg.model import unet_grid, unet_members
from mriseg.weights.bundle import member_configs, member_origins, training_stages

view = webapp.context()
model = view.model
segmenter = model.segmenter
grid = segmenter.preprocessor.config.grid_size
unets = unet_members(segmenter.model)

# On a projector the page comes one screen at a time (the diagram, the feature maps, the loss) and the teacher
# tells what the prose below says.
DIAGRAM, FEATURES, LOSS = "The U-Net", "Feature maps", "The loss"
step = webapp.presenter_step("how_step", [DIAGRAM, FEATURES, LOSS])
prose = step is None
if prose:  # on a projector the page list along the top names the page
    st.title("How it works: what the U-Net sees")  # begins with its navigation label
if prose:
    st.markdown(
        f"The model is a **U-Net**: an *encoder* shrinks the {grid}x{grid} input step by step while learning more "
        "and more abstract features (edges, then textures, then 'bright swollen tissue'), a *bottleneck* sees the "
        "whole slice at once, and a *decoder* grows the picture back to full size. **Skip connections** hand each "
        "decoder level the encoder's sharp, high-resolution features, so the outline comes out crisp. Everything "
        "below is read from the loaded model, not written by hand."
    )
member = 0
if len(unets) > 1 and step != LOSS:
    origins = member_origins(model.config)
    if any(origins):
        history = "; ".join(f"U-Net {number} began from the weights of U-Net {origin} and was trained on by itself"
                            if origin else f"U-Net {number} was trained from a random start"
                            for number, origin in enumerate(origins, start=1))
        history += ", so they ended up making different mistakes."
    else:
        history = "Each was trained from its own random start and makes its own mistakes."
    if prose:
        st.markdown(
            f"This model is an **ensemble of {len(unets)} U-Nets**. {history} The app averages their tumour "
            "probabilities: a faint slice one of them misses, another may catch. Pick one to look inside."
        )
    member = st.radio("U-Net", range(len(unets)), horizontal=True, key="ensemble_member",
                      format_func=lambda i: f"U-Net {i + 1} (base width {unets[i].config.base_width})")
    member_grid = unet_grid(segmenter.model, member, grid)
    if member_grid != grid and prose:
        st.markdown(f"This U-Net was trained on a coarser {member_grid}x{member_grid} grid, so the ensemble shrinks "
                    "the slice to that size for it and enlarges its answer again before averaging: networks that "
                    "saw the anatomy at another scale make different mistakes.")
    grid = member_grid
context = segmenter.preprocessor.config.context_slices
if prose and context and member_configs(model.config)[member].get("widened_to_context"):
    # The ensemble stacks neighbours for its 2.5D members; a one-slice member gets them with zero weights.
    st.markdown("This U-Net was trained on **single slices**. The ensemble hands it the neighbouring slices too, "
                "for its 2.5D members, but its weights for them are zero: it reads the slice alone.")
elif prose and context:
    st.markdown(
        f"This U-Net reads each slice together with the **{context} slice{'s' * (context > 1)} above and below** "
        f"it, stacked as {1 + 2 * context} input channels (\"2.5D\"). A radiologist scrolls up and down to decide "
        "whether a faint bright patch is tumour; the neighbours give the model the same hint. A single uploaded "
        "image is used as its own neighbours."
    )
if prose and member_normalization(segmenter, member) == "volume":
    st.markdown("This U-Net sees intensities z-scored over the head **in the whole scan**, not in each slice alone: "
                "near the top of the head, where tumour can fill much of a small slice, scoring that slice against "
                "itself would dim the tumour.")


def diagram_section(stages: list) -> None:
    """The U-Net drawn from the loaded model, with its stages' sizes (a table beside the prose, the total on a
    projector)."""
    # The diagram gets a row of its own: squeezed into a column it was scaled down to unreadably small text.
    font_size = PRESENTER_DIAGRAM_FONT_SIZE if view.presenter else DIAGRAM_FONT_SIZE
    st.graphviz_chart(architecture_dot(stages, font_size), width="content")
    total = sum(s.parameters for s in stages)
    whole = (f" ({sum(p.numel() for p in segmenter.model.parameters()):,} in the whole ensemble)" if len(unets) > 1
             else "")
    if not prose:
        st.markdown(f"**{total:,} parameters** in all{whole}.")
        return
    left, right = st.columns([3, 2])
    left.dataframe(
        [{"stage": s.name, "channels in → out": f"{s.in_channels} → {s.out_channels}", "size": f"{s.side}x{s.side}",
          "parameters": s.parameters, "receptive field (px)": s.receptive_field} for s in stages],
        hide_index=True,
    )
    right.markdown(
        f"**{total:,} parameters** in all{whole}. The *receptive field* is how much of the {grid}x{grid} input one "
        f"output pixel can see: {stages[0].receptive_field} px after the first block, "
        f"{max(s.receptive_field for s in stages)} px at the end, enough to compare a bright spot with the whole "
        "hemisphere around it."
    )


explanations = {
    "encoder": "Two 3x3 convolutions (each followed by batch normalisation and ReLU) find patterns; max-pooling "
               "then halves the size so the next level sees a wider area.",
    "bottleneck": "The deepest, coarsest level: few pixels, many channels, each summarising a large region.",
    "decoder": "A transposed convolution doubles the size (the up-sampled path); the encoder's features of the "
               "same size are joined to it (the skip connection); two 3x3 convolutions merge them.",
}


def feature_section(stages: list) -> None:
    """Feature maps of the current slice (the one the Segment page shows) at one stage, a few channels of it."""
    if prose:
        st.header("Feature maps of the current scan")
    case = webapp.current_case()
    if case is None:
        st.info("Open a sample or upload a scan on the Segment page to see its feature maps.")
        return
    volume = case.volume
    index = st.session_state.get(webapp.KEPT, {}).get("slice", volume.n_slices // 2 + 1) - 1
    maps = webapp.feature_maps_for(model, case, index, member)
    names = [s.name for s in stages if s.kind in ("encoder", "bottleneck", "decoder")]
    # On a projector the two choices share a row and the teacher says what the caption says.
    choices = st.columns(2) if view.presenter else (st.container(), st.container())
    stage_name = choices[0].selectbox("Stage", names, index=names.index("decoder 1"), key="feature_stage")
    kind = stage_name.split()[0]
    if prose:
        st.caption(explanations[kind] + f" Slice {index + 1} of {case.name}.")
    strongest = maps.strongest_channels(stage_name, 4)
    channel_count = len(maps.maps[stage_name])
    channels = choices[1].multiselect(f"Channels (0-{channel_count - 1}; the 4 most active are preselected)",
                                      list(range(channel_count)), default=strongest, max_selections=8,
                                      key=f"channels-{stage_name}")
    rows = [(stage_name, "output")]
    if kind == "decoder":
        rows = [(f"{stage_name}: up-sampled", "up-sampled path (from below)"),
                (f"{stage_name}: skip", "skip connection (from the encoder)"), (stage_name, "merged output")]
    input_image = display_image(volume.pixels[index])
    # A projector's three rows of pictures fit its screen at ten to a row, each row's title beside it.
    per_row = max(len(channels) + 2, 10) if view.presenter else max(1, len(channels)) + 1
    for name, label in rows:
        activation = maps.maps[name]
        title = f"**{label}**: {activation.shape[0]} channels of {activation.shape[1]}x{activation.shape[2]}"
        if not view.presenter:
            st.markdown(title)
        columns = st.columns(per_row)
        if view.presenter:
            columns[0].markdown(title)
            columns = columns[1:]
        columns[0].image(input_image, caption="input", width="stretch")
        for column, channel in zip(columns[1:], channels, strict=False):
            if channel >= activation.shape[0]:
                continue
            picture = activation[channel]
            low, high = float(picture.min()), float(picture.max())
            scaled = np.zeros_like(picture) if high == low else (picture - low) / (high - low)
            column.image((scaled * 255).astype(np.uint8), caption=f"channel {channel}", width="stretch")


def loss_section() -> None:
    """Why the loss is cross-entropy plus soft Dice."""
    if prose:
        st.header("What the model was trained to minimise")
    st.markdown(
        "Tumour covers about **1 %** of the pixels of a typical slice. A model that answers *no tumour* everywhere "
        "is therefore 99 % accurate in pixel terms, and cross-entropy alone, averaged over all pixels, is dominated "
        "by the easy background too. So mriseg trains with **binary cross-entropy + soft Dice**: cross-entropy "
        "rewards an honest probability for every pixel (the Metrics page's reliability diagram shows how close this "
        "model comes), and the Dice term, 1 − 2|P∩T| / (|P| + |T|), scores only the "
        "overlap with the tumour itself, so the empty background cannot hide a miss. That is also why the results "
        "are reported as Dice per patient rather than pixel accuracy."
    )
    stages = [stage for member in member_configs(model.config) for stage in training_stages(member)]
    if any(stage.get("training", {}).get("dice_per_slice") for stage in stages):
        st.markdown(
            "Taken over a whole batch of slices at once, the Dice term is ruled by the large middle slices of big "
            "tumours. Part of this model's training took it **on each slice with tumour** and averaged: the small "
            "patch at a lesion's top or bottom slice, where most misses are, then counts as much as a large one."
        )


stages = describe(unets[member], grid)
if step in (None, DIAGRAM):
    diagram_section(stages)
if step in (None, FEATURES):
    feature_section(stages)
if step in (None, LOSS):
    loss_section()
