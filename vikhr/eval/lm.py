"""vikhr's lm-eval model: HFLM with BOS-free rolling loglikelihoods, a count of the compute each task
takes, and a `batch_size="auto"` that searches at the length the requests need (on a CPU, no search).

Imported when a model is loaded: it imports lm-eval and torch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from lm_eval.models.huggingface import HFLM

from vikhr.errors import VikhrError, first_line
from vikhr.progress_bar import bars_off, bars_shown, transformers_bars
from vikhr.sft.own_template import FIXED_DATE, STAND_IN


def available_memory() -> int:
    """Bytes of memory the machine can still give (MemAvailable), or 4 GiB where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def cpu_batch_size(length: int, vocab: int, hidden: int, available: int, cap: int) -> int:
    """`--batch-size auto` on a CPU: the most sequences of `length` tokens whose forward pass fits in
    a quarter of `available` bytes, between 1 and `cap`. A sequence holds its float32 logits three
    times over (the logits, lm-eval's log-softmax, the gathered copy) and a few hidden states."""
    per_sequence = length * 4 * (3 * vocab + 16 * hidden)
    return max(1, min(cap, available // 4 // max(per_sequence, 1)))


@contextlib.contextmanager
def evaluation_bars(show: bool) -> Iterator[None]:
    """vikhr's rule for every bar of an evaluation, lm-eval's and transformers' too: none unless
    `show` and `bars_shown()` (lm-eval draws its bars into any stream, logs included). lm-eval's
    models take a switch (VikhrLM asks `bars_shown`); its task building and transformers' weight
    loading do not, and are turned off here."""
    if show and bars_shown():
        yield
        return
    import lm_eval.api.task

    task_bar = lm_eval.api.task.tqdm
    lm_eval.api.task.tqdm = functools.partial(task_bar, disable=True)
    try:
        with bars_off(), transformers_bars(show=False):
            yield
    finally:
        lm_eval.api.task.tqdm = task_bar


class VikhrLM(HFLM):
    """HFLM with three changes.

    - Its rolling loglikelihood scores the text's tokens only. HFLM encodes a rolling text with
      the tokenizer's default special tokens, so with a tokenizer that adds BOS (Mistral, Llama)
      the text's first "token" would be a BOS after the BOS prefix token, scored as part of the
      text. Here the text is encoded without special tokens and the prefix token (BOS)
      conditions the first real token, as in training.
    - It counts the positions it runs through the model (`model_tokens`).
    - `batch_size="auto"` searches at the length the requests need, and on a CPU not at all.
    - With `use_chat_template` (--chat-template) a prompt ends with what the template writes
      before an answer's text, not only its generation prompt (vikhr's mistral: a space; Qwen3:
      its empty thinking block) — a prompt to generate from without its trailing spaces, which the
      answer's first token holds in the SFT data —, generation also stops at the text the template
      closes an answer with (a ChatML end spelled out as text), a template without a system role
      gets the system text at the head of the first user turn (lm-eval would drop it), and text is
      encoded with no special tokens added: the template's BOS or none, as transformers'
      tokenize=True does.
    """

    _rolling = False
    # Positions run through the model (padding included), per task the compute it cost;
    # the batch-size search's probes are not counted.
    model_tokens = 0
    _probing = False
    # Wall seconds spent in the batch-size search (GPU): lm-eval searches again on every call, so
    # each task pays it once whatever its size.
    probe_seconds = 0.0
    # `--batch-size auto` probes generation and rolling requests at the length they need:
    # lm-eval itself probes them at the model's whole context (32k tokens for Mistral), which
    # takes minutes (all memory on a CPU) and settles on a batch far smaller than they allow.
    _probe_length: int | None = None
    # The longest probe at which the search found --max-batch-size: a later task's probe no longer
    # than it needs no passes (a forward pass's memory grows with the length), where lm-eval alone
    # searches again for every task.
    _largest_fits_at = 0
    chat = False
    task_name = ""  # the task being run (set by the runner), for notes
    task_shots = 0  # its shots per prompt (set by the runner): a cut drops them first
    _answer_prefix = ""
    _answer_end = ""
    _noted_folded_system = False

    def use_chat_template(self) -> None:
        """Prompt in the tokenizer's chat template (see the class doc; `chat_answer_frame`)."""
        self.chat = True
        # The date the model was tuned with (sft prepare's), not the day of the run, in templates
        # that write today's date (Llama-3.2's strftime_now): prompts and scores stay put.
        self.chat_template_args = {**self.chat_template_args, "date_string": FIXED_DATE}
        self._answer_prefix, self._answer_end = chat_answer_frame(self.tokenizer)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        try:
            text = self._render(chat_history, add_generation_prompt)
        except Exception as e:
            if not chat_history or chat_history[0]["role"] != "system" or len(chat_history) < 2:
                raise VikhrError(
                    f"--chat-template: the chat template refused a prompt: {first_line(e)}"
                ) from e
            text = self._render(_system_folded(chat_history), add_generation_prompt)
            if not self._noted_folded_system:
                self._noted_folded_system = True
                print(
                    f"note: --chat-template: the template refuses a system turn ({first_line(e)}): the "
                    "system text (--system-instruction, a task's description) opens the first user turn",
                    file=sys.stderr,
                )
        return text + self._answer_prefix if add_generation_prompt else text

    def _render(self, chat_history: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                chat_history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
                **self.chat_template_args,
            )
        )

    def _detect_batch_size(self, requests: Any = None, pos: int = 0) -> int:
        if requests:  # lm-eval's own probe length for them
            _, context, continuation = requests[pos]
            length = len((context + continuation)[-(self.max_length + 1) :][:-1])
        else:
            # Without requests (generation, rolling) lm-eval probes at `max_length`: here, at most that.
            length = min(self._probe_length or self.max_length, self.max_length)
        if self.device.type == "cpu":
            # lm-eval's search runs 5 forward passes at each size and relies on running out
            # of memory cleanly, which a CPU does not do (the kernel kills the process).
            config = self.model.config
            hidden = getattr(config, "hidden_size", 0)
            return cpu_batch_size(length, config.vocab_size, hidden, available_memory(), self.max_batch_size)
        # With several ranks each searches on its own requests and they agree in a collective:
        # every rank must search.
        if self.world_size == 1 and length <= self._largest_fits_at:
            return self.max_batch_size
        saved = self._max_length
        if requests is None:
            self._max_length = length
        self._probing = True
        began = time.perf_counter()
        try:
            found = super()._detect_batch_size(requests, pos)
        finally:
            self.probe_seconds += time.perf_counter() - began
            self._max_length = saved
            self._probing = False
        if found >= self.max_batch_size:
            self._largest_fits_at = max(self._largest_fits_at, length)
        return found

    @contextlib.contextmanager
    def _probing_at(self, length: int) -> Iterator[None]:
        self._probe_length = length
        try:
            yield
        finally:
            self._probe_length = None

    # lm-eval draws its bars whenever asked to on rank 0: here only as vikhr's rule allows.
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not bars_shown())

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> Any:
        # HFLM's rolling loglikelihood asks for this bar whatever its own caller said.
        disable_tqdm = disable_tqdm or not bars_shown()
        if not self._rolling:  # rolling windows fit the context by construction
            self._note_cut_prompts([len(c) + len(k) for _, c, k in requests])
        with lm_eval_cut_warnings_silenced():  # the note above says it once
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, **kwargs)

    def _note_cut_prompts(self, lengths: list[int]) -> None:
        """One note line when requests are longer than the context: HFLM keeps their last
        `max_length` + 1 tokens (the prompt's start, shots first, is dropped), with a log line for each
        request that `lm_eval_cut_warnings_silenced` leaves out."""
        cut = [n for n in lengths if n > self.max_length + 1]
        if not cut:
            return
        task = f"task {self.task_name}: " if self.task_name else ""
        rank = f" (rank {self.rank})" if self.world_size > 1 else ""
        # Without shots the cut takes the start of the question itself: fewer shots cannot help.
        remedy = (
            "shots first; give fewer shots (--num-fewshot) or a longer --max-length the model was trained to"
            if self.task_shots
            else "the task has no shots, so each loses the start of its own question: those are scored on "
            "what is left (a longer --max-length helps only where the model was trained to it)"
        )
        print(
            f"note: {task}{len(cut)} of {len(lengths)} requests{rank} are longer than the model's context "
            f"({self.max_length} tokens; the longest {max(cut) - 1}): their prompts are cut from the left, "
            f"{remedy}",
            file=sys.stderr,
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        disable_tqdm = disable_tqdm or not bars_shown()
        if self.chat:
            for r in requests:
                context, kwargs = r.arguments
                until = list(kwargs.get("until") or [])
                if self._answer_end:
                    kwargs = {**kwargs, "until": [*until, self._answer_end]}
                # A space before the answer (vikhr's mistral "[/INST] ") is, in the SFT data, part of the
                # answer's first token ("▁Пушкин", " Пушкин"): a prompt ending in it alone would have the
                # model go on from a token it never saw there.
                r.arguments = (context.rstrip(" "), kwargs)
        if self.batch_size != "auto" or not requests:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        prompt = max(len(self.tok_encode(r.args[0])) for r in requests)
        new = max(int(r.args[1].get("max_gen_toks", self.max_gen_toks)) for r in requests)
        with self._probing_at(prompt + new):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _model_call(self, inps: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._probing:
            self.model_tokens += inps.numel()
        return super()._model_call(inps, *args, **kwargs)

    def _model_generate(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        out = super()._model_generate(context, *args, **kwargs)
        # The prompt and every generated token but the last, which is never fed back.
        self.model_tokens += out.numel() - out.shape[0]
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        disable_tqdm = disable_tqdm or not bars_shown()
        self._rolling = True
        try:
            if self.batch_size != "auto" or not requests:
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            # A text's windows hold its tokens after the prefix token, at most the context.
            with self._probing_at(1 + max(len(self.tok_encode(r.args[0])) for r in requests)):
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._rolling = False

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """With --chat-template: the tokens of context + continuation, split before the first token
        that holds a character of the continuation, as the SFT mask splits a template's text from an
        answer. lm-eval moves the prompt's trailing white space into the scored part instead: right
        for vikhr's mistral ("[/INST] " + "да" is "▁да"), but Llama-3's and ChatML's "\n\n"/"\n"
        before an answer is a token of its own, which every choice was then scored on."""
        if not self.chat:
            return super()._encode_pair(context, continuation)
        enc = self.tokenizer(context + continuation, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        cut = next((k for k, (_, end) in enumerate(offsets) if end > len(context)), len(ids))
        return ids[:cut], ids[cut:]

    def tok_batch_encode(self, strings: list[str], *args: Any, **kwargs: Any) -> Any:
        """lm-eval's encoding of generation prompts: with --chat-template no special token is added
        either (the template's BOS, or none), as in `tok_encode`."""
        if not self.chat:
            return super().tok_batch_encode(strings, *args, **kwargs)
        saved, self.add_bos_token = self.add_bos_token, False
        try:
            return super().tok_batch_encode(strings, *args, **kwargs)
        finally:
            self.add_bos_token = saved

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if (self._rolling or self.chat) and add_special_tokens is None:
            add_special_tokens = False
        return super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)


def chat_answer_frame(tokenizer: Any) -> tuple[str, str]:
    """(what the tokenizer's chat template writes between its generation prompt and an answer's
    text, the text it closes an answer with, stripped), from a one-turn chat with a stand-in answer;
    ("", "") where the answer is not written after the generation prompt (R1-Distill's). A special
    token after text (the EOS after a spelled-out ChatML end) is left out: generated text is decoded
    without special tokens, so only the text before it can be matched as a stop."""
    question = [{"role": "user", "content": "?"}]
    fixed = {"tokenize": False, "date_string": FIXED_DATE}
    prompt = str(tokenizer.apply_chat_template(question, add_generation_prompt=True, **fixed))
    answered = [*question, {"role": "assistant", "content": STAND_IN}]
    whole = str(tokenizer.apply_chat_template(answered, **fixed))
    at = whole.rfind(STAND_IN)
    if at < 0 or not whole.startswith(prompt):
        return "", ""
    end = whole[at + len(STAND_IN) :].strip()
    cuts = [end.find(t) for t in tokenizer.all_special_tokens if end.find(t) > 0]
    return whole[len(prompt) : at], end[: min(cuts)].strip() if cuts else end


def _system_folded(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """`chat` without its system turn, whose text opens the first user turn."""
    system, first, *rest = chat
    return [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *rest]


# HFLM's warning for each request longer than the context, one line per request.
LM_EVAL_CUT_WARNING = "Combined length of context"


class _WithoutCutWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LM_EVAL_CUT_WARNING)


@contextlib.contextmanager
def lm_eval_cut_warnings_silenced() -> Iterator[None]:
    """HFLM's logger without its per-request "Combined length of context ... Truncating N tokens"
    lines, which VikhrLM's one note per task replaces; its other warnings are kept."""
    hf_logger = logging.getLogger(HFLM.__module__)
    without = _WithoutCutWarnings()
    hf_logger.addFilter(without)
    try:
        yield
    finally:
        hf_logger.removeFilter(without)
