"""Qwen3-VL-Embedding, equal to the official `Qwen3VLEmbedder` (QwenLM/Qwen3-VL-Embedding) and tested against it.

One item is a two-message chat (system = instruction, user = videos, images, texts), rendered with the
checkpoint's own chat template and generation prompt, padded on the right; the vector is the hidden state of the
last real token, L2-normalised, optionally truncated (MRL) and normalised again.

The family's three verbs (prepare, collate + run, finish) are kept in one module so the whole recipe reads top to
bottom; the pixel arithmetic (`qwen_vision`), frame choice (`frames`) and CPU kernels live beside it.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families import cpu_fusion, cpu_kernels, cpu_linear, packing, pooled_rows
from embedding_api.families import qwen_vision as vision
from embedding_api.families.base import Batch, FramePicker, PreparedItem, Span, finish_vectors
from embedding_api.families.frames import QwenFramePicker
from embedding_api.items import Item, VideoClip

log = logging.getLogger(__name__)

EMPTY_ITEM_TEXT = "NULL"
# Text tokens cut per step beyond the computed overflow, so re-tokenisation at the cut cannot leave it over.
_CUT_SLACK = 8
# No real token spans this many characters, so text cut there still overflows MAX_LENGTH and is cut exactly.
_MAX_CHARS_PER_TOKEN = 64
# Cut passes before giving up: the first removes the computed overflow, later ones only a few merged tokens.
_MAX_CUT_ROUNDS = 8
_INSTRUCTION_CACHE = 256  # distinct system blocks (and shared prefixes) whose token ids are kept


@dataclass(frozen=True)
class VisionLimits:
    """Image sizing knobs (pixels) and the optional operator caps applied before smart resize."""

    min_pixels: int = 4 * 32 * 32
    max_pixels: int = 1800 * 32 * 32
    max_image_size: int | None = None
    max_image_width: int | None = None
    max_image_height: int | None = None


@dataclass
class _Prompt:
    """A rendered item: the prompt text plus the visual inputs it refers to, in prompt order."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    videos: list[torch.Tensor] = field(default_factory=list)
    video_metadata: list[dict[str, Any]] = field(default_factory=list)
    cut_to: int | None = None  # a family rule cuts the encoded tokens to this length (see `_encoded`)
    # The prompt's token ids as prepare counted them, when it has no visual inputs: a batch of such prompts needs
    # no second tokenisation in collate.
    ids: np.ndarray | None = None


def system_instruction(instruction: str | None, default: str) -> str:
    """The official code's rule, kept whole so the adapter alone matches it: stripped; blank means the default; a
    full stop appended when the last character is not punctuation. (Which instruction applies, the input's or
    the request's, is `items.item_instruction`.)"""
    text = (instruction or "").strip() or default.strip()
    if text and not unicodedata.category(text[-1]).startswith("P"):
        return text + "."
    return text


class Qwen3VLFamily:
    """The adapter: prepare on CPU, run on the device, finish on the host."""

    kind = "qwen3_vl"
    task = "embed"
    modalities = frozenset({"text", "image", "video", "fused"})
    takes_instructions = True
    matryoshka = True

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: torch.device,
        default_instruction: str,
        max_length: int,
        limits: VisionLimits,
        max_video_frames: int = vision.LIST_MAX_FRAMES,
    ) -> None:
        self.model = model
        self.processor = processor
        processor.tokenizer.padding_side = "right"
        # Per-item counting gets a tokenizer of its own: the processor's one switches its padding state on every
        # call, and sharing it across threads let a collation see a concurrent count's "no padding" state.
        self.tokenizer = copy.deepcopy(processor.tokenizer)
        self._processor_lock = threading.Lock()  # collations may overlap (device thread and collate thread)
        self.torch_device = device
        self.device = str(device)
        self.model_dtype: torch.dtype = next(model.parameters()).dtype
        self.dtype = str(self.model_dtype).removeprefix("torch.")
        self.dimension = int(model.config.text_config.hidden_size)
        self.default_instruction = default_instruction
        self.max_length = max_length
        self.limits = limits
        self.frame_picker: FramePicker = QwenFramePicker(min(max_video_frames, vision.LIST_MAX_FRAMES))
        image_processor = processor.image_processor
        self.patch_size = int(image_processor.patch_size)
        self.patch_factor = self.patch_size * int(image_processor.merge_size)
        video_processor = processor.video_processor
        self.video_factor = int(video_processor.patch_size) * int(video_processor.merge_size)
        self.temporal_patch = int(video_processor.temporal_patch_size)
        self.pin_memory = device.type == "cuda"
        # Padding-free batches when the model runs with the packed attention (the CPU); padded rows otherwise.
        self.packs_sequences = getattr(model.config, "_attn_implementation", None) == packing.ATTENTION
        # Where a shared prefix must stop: vision placeholders get their features by order of appearance.
        self._vision_tokens = [model.config.image_token_id, model.config.video_token_id]
        pooled_rows.wrap_last_layer(model.language_model.layers)
        cpu_linear.pack_linears(model)
        cpu_fusion.fuse(model, cpu_kernels.active())
        self._end_of_turn = "<|im_end|>"
        self._system_ids = functools.lru_cache(maxsize=_INSTRUCTION_CACHE)(self._ids)
        self._prefixes = packing.PrefixStore()  # shared prefixes' keys and values, across passes (device thread)

    # ---- prepare (CPU, per item) -------------------------------------------------------------------------

    def prepare(self, item: Item) -> PreparedItem:
        item.check_wanted()
        images = [self._resize_image(image) for image in item.images]
        videos = [self._prepare_video(clip, item) for clip in item.videos]
        item.check_wanted()
        texts = [text[: self.max_length * _MAX_CHARS_PER_TOKEN] for text in item.texts]  # bounds tokenizer work
        instruction = system_instruction(item.instruction, self.default_instruction)
        text, tokens, ids = self._render_and_tokenize(instruction, texts, images, videos)
        if tokens > self.max_length:
            if not item.truncate:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"input is {tokens} tokens, above MAX_LENGTH={self.max_length}, and truncate is false",
                    code="input_too_long",
                )
            text, tokens, ids = self._shorten(instruction, texts, images, videos, tokens)
        return self._prepared(text, tokens, images, videos, item.modalities, ids)

    def _resize_image(self, image: Image.Image) -> Image.Image:
        limits = self.limits
        scale = vision.cap_size(
            image.width, image.height, limits.max_image_size, limits.max_image_width, limits.max_image_height
        )
        if scale < 1.0:
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
            )
        return vision.fetch_image(image, self.patch_size, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)

    def _prepare_video(self, clip: VideoClip, item: Item) -> tuple[torch.Tensor, dict[str, Any]]:
        """The official embedder's two video paths: a list of frames, and a video file."""
        if not len(clip.frames):
            raise ApiError(ErrorKind.MEDIA_DECODE, "video has no frames")
        if clip.fps is None:
            # A frame list: at most 64 frames, each through the image path on the video grid, said to be at 2 fps,
            # all sharing a total pixel budget.
            frames = list(clip.frames)
            picked = [frames[p] for p in self.frame_picker.list_positions(len(frames))]
            pre_sized = (vision.fetch_image(frame, self.video_factor) for frame in picked)
            stack = vision.resize_frames(
                pre_sized, len(picked), self.video_factor, vision.LIST_TOTAL_PIXELS, item.check_wanted
            )
            count = int(stack.shape[0])
            metadata = {"fps": vision.LIST_SAMPLE_FPS, "frames_indices": list(range(count)), "total_num_frames": count}
            return stack, metadata
        # A video file: the frames media sampled (decoded one at a time here), its real fps and source indices.
        self._refuse_oversized_file(clip)
        stack = vision.resize_frames(clip.frames, len(clip.frames), self.video_factor, None, item.check_wanted)
        indices = list(clip.frame_indices or range(len(clip.frames)))
        indices += [indices[-1]] * (int(stack.shape[0]) - len(indices))
        metadata = {"fps": clip.fps, "frames_indices": indices, "total_num_frames": len(indices)}
        return stack, metadata

    def _refuse_oversized_file(self, clip: VideoClip) -> None:
        """A file whose frames alone exceed MAX_LENGTH is refused from its probed size, before any decoding."""
        height, width = getattr(clip.frames, "height", 0), getattr(clip.frames, "width", 0)
        if not (height and width):
            return
        count = vision.even_count(len(clip.frames))
        size = vision.video_size(height, width, len(clip.frames), self.video_factor, None)
        tokens = count // self.temporal_patch * self._visual_tokens(size[0], size[1], self.video_factor)
        if tokens > self.max_length:
            raise ApiError(
                ErrorKind.ITEM_TOO_LARGE,
                f"video needs {tokens} tokens ({count} frames of {size[1]}x{size[0]}), above "
                f"MAX_LENGTH={self.max_length}; send a shorter or smaller video",
            )

    def _render(self, instruction: str, texts: list[str], image_count: int, video_count: int) -> str:
        content: list[dict[str, str]] = [{"type": "video"} for _ in range(video_count)]
        content += [{"type": "image"} for _ in range(image_count)]
        content += [{"type": "text", "text": text} for text in texts]
        if not content:
            content = [{"type": "text", "text": EMPTY_ITEM_TEXT}]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": instruction}]},
            {"role": "user", "content": content},
        ]
        rendered = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return str(rendered)

    def _visual_tokens(self, height: int, width: int, factor: int) -> int:
        return (height // factor) * (width // factor)

    def _render_and_tokenize(
        self,
        instruction: str,
        texts: list[str],
        images: list[Image.Image],
        videos: list[tuple[torch.Tensor, dict[str, Any]]],
    ) -> tuple[str, int, np.ndarray | None]:
        """The rendered prompt and the tokens the model will see (see `_tokenize_rendered`)."""
        prompt = self._render(instruction, texts, len(images), len(videos))
        return prompt, *self._tokenize_rendered(prompt, images, videos)

    def _tokenize_rendered(
        self, prompt: str, images: list[Image.Image], videos: list[tuple[torch.Tensor, dict[str, Any]]]
    ) -> tuple[int, np.ndarray | None]:
        """How many tokens the model will see for a rendered prompt, and their ids when it has no visual inputs
        (the processor expands placeholders by the pixels, so those prompts are only counted here)."""
        if images or videos:
            return self._count_rendered(prompt, images, videos), None
        system = self._system_block(prompt)
        ids = np.concatenate([self._system_ids(system), self._ids(prompt[len(system) :])])
        return len(ids), ids

    def _count_rendered(
        self, prompt: str, images: list[Image.Image], videos: list[tuple[torch.Tensor, dict[str, Any]]]
    ) -> int:
        """Tokens the model will see for a rendered prompt and its visual inputs."""
        # The system block ends with a special token, where the tokenizer splits anyway: its count is cached, so an
        # instruction shared by many items (or requests) is tokenised once.
        system = self._system_block(prompt)
        count = self._count_tokens(system) + self._count(prompt[len(system) :])
        for image in images:
            count += self._visual_tokens(image.height, image.width, self.patch_factor) - 1
        for frames, metadata in videos:
            groups = int(frames.shape[0]) // self.temporal_patch
            per_group = self._visual_tokens(int(frames.shape[2]), int(frames.shape[3]), self.video_factor)
            # the template's one pad becomes, per frame group, stamp + start + pads + end (the template's own start
            # and end stay); each stamp sits between special tokens, so it is tokenised on its own
            stamps = sum(self._count_tokens(f"<{t:.1f} seconds>") for t in self._timestamps(metadata))
            count += stamps + groups * (per_group + 2) - 1
        return count

    def _count(self, text: str) -> int:
        return len(self._ids(text))

    def _count_tokens(self, text: str) -> int:
        """`_count` for texts many items repeat (system blocks, timestamps): read from the ids' cache."""
        return len(self._system_ids(text))

    def _ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return np.asarray(ids, dtype=np.int64)

    def _timestamps(self, metadata: dict[str, Any]) -> list[float]:
        indices = metadata["frames_indices"]
        fps = metadata["fps"]
        step = self.temporal_patch
        return [(indices[i] + indices[i + step - 1]) / 2 / fps for i in range(0, len(indices), step)]

    def _shorten(
        self,
        instruction: str,
        texts: list[str],
        images: list[Image.Image],
        videos: list[tuple[torch.Tensor, dict[str, Any]]],
        tokens: int,
    ) -> tuple[str, int, np.ndarray | None]:
        """Cut the user's text from its end so the whole template still fits (the pooled token stays the last).

        Each text part is tokenised once and the overflow is taken from the last parts in one pass (whole parts
        dropped, the first part still needed cut at a token boundary), so the work is linear in the parts. Only
        when token merges at the cut leave the prompt over the limit is it cut again, a few tokens at a time.
        """
        texts = list(texts)
        text, ids = "", None
        for _ in range(_MAX_CUT_ROUNDS):
            if tokens <= self.max_length:
                return text, tokens, ids
            self._cut_from_end(texts, tokens - self.max_length + _CUT_SLACK)
            if not any(texts):
                text, tokens, ids = self._render_and_tokenize(instruction, texts, images, videos)
                if tokens > self.max_length:
                    raise ApiError(
                        ErrorKind.ITEM_TOO_LARGE,
                        f"input needs {tokens} tokens without any text, above MAX_LENGTH={self.max_length}; "
                        "send smaller or fewer images or video frames",
                    )
                return text, tokens, ids
            text, tokens, ids = self._render_and_tokenize(instruction, texts, images, videos)
        if tokens > self.max_length:
            raise ApiError(ErrorKind.INVALID_REQUEST, f"input could not be shortened to MAX_LENGTH={self.max_length}")
        return text, tokens, ids

    def _cut_from_end(self, texts: list[str], overflow: int) -> int:
        """Take `overflow` tokens off the end of `texts` (in place: whole parts dropped, the last part still needed
        cut at a token boundary); returns what is left of the overflow."""
        for position in range(len(texts) - 1, -1, -1):
            if overflow <= 0:
                break
            if not texts[position]:
                continue
            offsets = self.tokenizer(texts[position], add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            keep = max(0, len(offsets) - overflow)
            overflow -= len(offsets) - keep
            texts[position] = texts[position][: offsets[keep - 1][1]] if keep else ""
        return overflow

    def _prepared(
        self,
        text: str,
        tokens: int,
        images: list[Image.Image],
        videos: list[tuple[torch.Tensor, dict[str, Any]]],
        modalities: tuple[str, ...],
        ids: np.ndarray | None = None,
    ) -> PreparedItem:
        """A rendered prompt with its visual inputs (or its token ids), costed by its tokens and pixels."""
        prompt = _Prompt(
            text=text,
            images=images,
            videos=[frames for frames, _ in videos],
            video_metadata=[meta for _, meta in videos],
            ids=ids,
        )
        pixels = sum(im.width * im.height for im in images)
        pixels += sum(int(frames.shape[0] * frames.shape[2] * frames.shape[3]) for frames, _ in videos)
        prefix = self._shared_prefix(text)
        return PreparedItem(
            payload=prompt,
            tokens=tokens,
            pixels=pixels,
            modalities=modalities,
            shared_prefix=prefix or None,
            shared_tokens=max(0, self._count_tokens(prefix) - 1) if prefix else 0,  # less one: a merge at the cut
        )

    def _system_block(self, prompt: str) -> str:
        """The prompt's system block (template and instruction), up to its end-of-turn token; "" without one."""
        end = prompt.find(self._end_of_turn)
        return prompt[: end + len(self._end_of_turn)] if end >= 0 else ""

    def _shared_prefix(self, prompt: str) -> str:
        """The start of the prompt other items may share: the system block."""
        return self._system_block(prompt)

    # ---- collate (CPU, per batch) ------------------------------------------------------------------------

    def collate(self, items: list[PreparedItem]) -> Batch:
        prompts: list[_Prompt] = [item.payload for item in items]
        if self.packs_sequences and all(prompt.ids is not None and prompt.cut_to is None for prompt in prompts):
            return self._collate_token_ids([prompt.ids for prompt in prompts if prompt.ids is not None])
        kwargs: dict[str, Any] = {
            "text": [prompt.text for prompt in prompts],
            "padding": True,
            "truncation": False,
            "return_tensors": "pt",
            "do_resize": False,
        }
        images = [image for prompt in prompts for image in prompt.images]
        if images:
            kwargs["images"] = images
        videos = [frames for prompt in prompts for frames in prompt.videos]
        if videos:
            kwargs["videos"] = videos
            kwargs["video_metadata"] = [meta for prompt in prompts for meta in prompt.video_metadata]
            kwargs["do_sample_frames"] = False
            kwargs["cap_pixels_per_frame"] = True  # frames are already sized by the recipe; this only quiets a notice
        with self._processor_lock:
            encoded = self.processor(**kwargs)
        tensors = self._encoded(
            {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}, prompts
        )
        counts = [int(n) for n in tensors["attention_mask"].sum(dim=1).tolist()]
        spans = self._packed(tensors, counts) if self.packs_sequences else None
        if self.pin_memory:
            tensors = {key: value.pin_memory() for key, value in tensors.items()}
        return Batch(tensors=tensors, token_counts=counts, spans=spans)

    def _collate_token_ids(self, sequences: list[np.ndarray]) -> Batch:
        """Prompts without visual inputs, packed from the ids prepare counted: the processor would only tokenise
        them again (about a tenth of a core per forward pass on the mixed-length benchmark)."""
        counts = [len(ids) for ids in sequences]
        positions = torch.cat([torch.arange(count) for count in counts]).expand(3, -1)
        tensors: dict[str, torch.Tensor] = {}
        spans = self._pack_row(tensors, torch.from_numpy(np.concatenate(sequences)), positions, sequences)
        return Batch(tensors=tensors, token_counts=counts, spans=spans)

    def _encoded(self, tensors: dict[str, torch.Tensor], prompts: list[_Prompt]) -> dict[str, torch.Tensor]:
        """The processor's output as the model reads it (a family that cuts tokens after encoding does it here)."""
        return tensors

    def _packed(self, tensors: dict[str, torch.Tensor], counts: list[int]) -> list[Span]:
        """The padded batch, in place, as one row of real tokens (shared prefixes once), with each sequence's own
        (multimodal) positions; returns where each sequence is."""
        mask = tensors.pop("attention_mask").bool()
        input_ids = tensors.pop("input_ids")
        token_types = tensors.pop("mm_token_type_ids", None)
        if "image_grid_thw" in tensors or "video_grid_thw" in tensors:
            positions, _ = self.model.get_rope_index(
                input_ids,
                token_types,
                tensors.get("image_grid_thw"),
                tensors.get("video_grid_thw"),
                attention_mask=mask.long(),
            )
            positions = positions[:, mask]
        else:
            positions = torch.cat([torch.arange(count) for count in counts]).expand(3, -1)
        sequences = [row[row_mask].numpy() for row, row_mask in zip(input_ids, mask, strict=True)]
        return self._pack_row(tensors, input_ids[mask], positions, sequences)

    def _pack_row(
        self, tensors: dict[str, torch.Tensor], ids: torch.Tensor, positions: torch.Tensor, sequences: list[np.ndarray]
    ) -> list[Span]:
        """The sequences' real tokens `ids` (laid end to end) with their `positions`, into `tensors` as one row,
        shared prefixes once; returns where each sequence is."""
        layout = packing.share_prefixes(sequences, unshareable=self._vision_tokens)
        tensors["input_ids"] = ids[layout.keep][None]
        tensors["position_ids"] = positions[:, layout.keep][:, None, :].contiguous()
        return layout.spans

    # ---- run (device) ------------------------------------------------------------------------------------

    def run(self, batch: Batch) -> np.ndarray:
        device = self.torch_device
        with torch.inference_mode():
            inputs: dict[str, torch.Tensor] = {}
            for key, value in batch.tensors.items():
                value = value.to(device, non_blocking=True)
                if value.is_floating_point():
                    value = value.to(self.model_dtype)
                inputs[key] = value
            if batch.spans is not None:  # one packed row: the last token of each sequence
                pooled = self._run_packed(inputs, batch.spans)
            else:  # padded rows (right padding): the last real token of each row
                mask = inputs["attention_mask"]
                positions = torch.arange(mask.shape[1], device=device)
                last = (mask.to(torch.long) * positions).argmax(dim=1)
                rows = torch.arange(mask.shape[0], device=device) * mask.shape[1] + last
                with pooled_rows.pooled_rows(rows):
                    hidden = self.model(**inputs, use_cache=False).last_hidden_state
                pooled = hidden.reshape(-1, hidden.shape[-1])[rows].float()
            host: np.ndarray = pooled.cpu().numpy()  # the batch's one device-to-host copy
            return host

    def _run_packed(self, inputs: dict[str, torch.Tensor], spans: list[Span]) -> torch.Tensor:
        """The packed row's pooled states; a shared prefix a previous pass kept is read, not computed again."""
        first = inputs["input_ids"][0, spans[0].start : spans[0].end].cpu().numpy()
        stored = self._prefixes.longest(first)
        keep = None
        offset = len(stored.ids) if stored is not None else 0  # the row's first tokens, read instead of computed
        if offset:
            inputs = {**inputs, "input_ids": inputs["input_ids"][:, offset:]}
            inputs["position_ids"] = inputs["position_ids"][..., offset:]
        elif size := packing.prefix_to_keep(spans):
            keep = packing.StoredPrefix(first[:size].copy(), {})
        rows = torch.tensor([span.end - 1 - offset for span in spans], device=self.torch_device)
        with (
            packing.packed_sequences(spans, self.torch_device, stored=stored, keep=keep),
            pooled_rows.pooled_rows(rows),
        ):
            hidden = self.model(**inputs, use_cache=False).last_hidden_state[0]
        if keep is not None:
            self._prefixes.add(keep)
        pooled: torch.Tensor = hidden[rows].float()
        return pooled

    # ---- finish (host) -----------------------------------------------------------------------------------

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return finish_vectors(pooled, dimensions, normalize)
