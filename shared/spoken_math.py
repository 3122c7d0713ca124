"""Numbers and arithmetic as people say them: "two fifty-five" -> 255, "subtract 17 from 50" -> "50 - 17".

SmolLM2-135M turns "nine squared" into ``9 * 8`` and "add 129, 47 and 88" into
``129 + 47 * 88``: a model of that size cannot be trusted with the one thing a
calculator request is about. The words settle it exactly, so a small parser does
it in microseconds and the model is asked only when the parser declines
(shared.argument_hints uses :func:`spoken_expression` for a tool whose one
argument is an ``expression``; shared.intent_router treats a request that parses
completely as a calculation).

The parser is deliberately strict: the numbers and operators must form the
request's core with nothing but lead-in words before ("what's", "quick one,
add up") and a few filler words after ("please", "for me"); "add 2 cups of
flour and 3 eggs" or "I have 3 apples plus 2 pears" are not calculations.

Hand-rolled on purpose: English number words up to the millions and two dozen
operator phrasings; no library does spoken arithmetic, and the calculator that
evaluates the result (edge/tools/calculator.py) parses it safely.
"""

from __future__ import annotations

import ast
import re

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
        if w != "_"}
SCALES = {"thousand": 1000, "million": 1_000_000}
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z']+|[^\sa-z\d]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?$")


def _is_number_word(word: str) -> bool:
    return word in UNITS or word in TENS or word == "hundred" or word in SCALES


class _Run:
    """Number words being read, e.g. "three thousand two hundred and five"; ``numbers`` holds what is done."""

    def __init__(self) -> None:
        self.numbers: list[str] = []
        self.total = 0  # thousands and millions read so far
        self.chunk: int | None = None  # the part below a thousand
        self.prev = ""

    def flush(self) -> None:
        if self.chunk is not None or self.total:
            self.numbers.append(str(self.total + (self.chunk or 0)))
        self.total, self.chunk = 0, None

    def add(self, word: str) -> None:
        chunk, prev = self.chunk, self.prev
        if word in UNITS or word in TENS:
            value = UNITS.get(word, TENS.get(word, 0))
            if chunk is None:
                self.chunk = value
            elif prev in TENS and value < 10 and chunk % 10 == 0:  # "twenty five"
                self.chunk = chunk + value
            elif prev in ("hundred", "and") and chunk % 100 == 0:  # "a hundred (and) five"
                self.chunk = chunk + value
            elif prev in UNITS and 0 < chunk < 10 and value >= 10:  # "two fifty", "nine eleven": hundreds, said short
                self.chunk = chunk * 100 + value
            else:  # "five six": two numbers
                self.flush()
                self.chunk = value
        elif word == "hundred":
            self.chunk = (chunk or 1) * 100 if (chunk or 1) < 100 else chunk
        elif word in SCALES:
            self.total += (chunk or 1) * SCALES[word]
            self.chunk = None
        self.prev = word


def words_to_digits(text: str) -> str:
    """The text, lower case, tokens space-separated, with every number in words written in digits:
    "One hundred and five, forty-two and 7" -> "105 , 42 and 7"; "a hundred" -> "100"; "three point five" -> "3.5"."""
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower().replace("’", "'"))
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000
    tokens = _TOKEN.findall(text)
    out: list[str] = []
    run: _Run | None = None
    i = 0
    while i < len(tokens):
        word, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if _is_number_word(word) or (word in ("a", "one") and nxt in ("hundred", *SCALES)):
            run = run or _Run()
            run.add("one" if word == "a" else word)
        elif word == "and" and run is not None and run.prev in ("hundred", *SCALES) and _is_number_word(nxt):
            run.prev = "and"
        elif word == "point" and run is not None and nxt in UNITS and UNITS[nxt] < 10:
            digits = ""
            while i + 1 < len(tokens) and tokens[i + 1] in UNITS and UNITS[tokens[i + 1]] < 10:
                digits += str(UNITS[tokens[i + 1]])
                i += 1
            run.flush()
            run.numbers[-1] += "." + digits
        else:
            if run is not None:
                run.flush()
                out += run.numbers
                run = None
            out.append(word)
        i += 1
    if run is not None:
        run.flush()
        out += run.numbers
    return " ".join(out)


def spoken_numbers(text: str) -> list[float | int]:
    """Numbers in digits or English words: "set it to 30" -> [30], "fifty five" -> [55], "a hundred" -> [100]."""
    return [float(t) if "." in t else int(t) for t in words_to_digits(text).split() if _NUMBER.match(t)]


# ---------------------------------------------------------------- arithmetic
_N = r"(-?\d+(?:\.\d+)?)"
_LIST = rf"{_N}((?:\s*,?\s*(?:and\s+)?{_N})+)"
_REWRITES: list[tuple[re.Pattern[str], object]] = [(re.compile(p), r) for p, r in [
    # prefix forms first: they decide what "and", "from" and "by" mean
    (rf"\b(?:add(?: up)?|sum(?: up)?|total(?: up)?|(?:the )?(?:sum|total) of)\s+{_LIST}",
     lambda m: " + ".join(re.findall(_N, m.group(0)))),
    (rf"\badd\s+{_N}\s+to\s+{_N}", r"\1 + \2"),
    (rf"\b(?:subtract|take away|take|deduct)\s+{_N}\s+(?:away\s+)?from\s+{_N}", r"\2 - \1"),
    (rf"\b(?:the )?difference between\s+{_N}\s+and\s+{_N}", r"\1 - \2"),
    (rf"\bmultiply\s+{_N}\s+(?:by|and|with|times)\s+{_N}", r"\1 * \2"),
    (rf"\b(?:the )?product of\s+{_N}\s+and\s+{_N}", r"\1 * \2"),
    (rf"\bdivide\s+{_N}\s+by\s+{_N}", r"\1 / \2"),
    (rf"\bdivide\s+{_N}\s+into\s+{_N}", r"\2 / \1"),
    (rf"\b(?:the )?quotient of\s+{_N}\s+(?:and|by)\s+{_N}", r"\1 / \2"),
    (rf"\b(?:the )?square root of\s+{_N}", r"sqrt(\1)"),
    (rf"\b(?:the )?cube root of\s+{_N}", r"(\1 ** (1 / 3))"),
    (rf"{_N}\s+squared\b", r"(\1 ** 2)"),
    (rf"{_N}\s+cubed\b", r"(\1 ** 3)"),
    (rf"{_N}\s*(?:percent|per cent|%)\s+of\s+{_N}", r"(\1 / 100 * \2)"),
    (rf"\bhalf of\s+{_N}", r"(\1 / 2)"),
    (rf"\b(?:a )?quarter of\s+{_N}", r"(\1 / 4)"),
    (rf"\b(?:double|twice)\s+{_N}", r"(2 * \1)"),
    (rf"\btriple\s+{_N}", r"(3 * \1)"),
    # infix words
    (r"\bto the power of\b|\braised to(?: the power of)?\b|\^", "**"),
    (r"\bmultiplied by\b|\btimes\b|(?<=\d )x(?= [\d(])|×", "*"),
    (r"\bdivided by\b|(?<=\d )over(?= [\d(])|÷", "/"),
    (r"\bplus\b", "+"),
    (r"\bminus\b|\btake away\b", "-"),
]]
_CORE = re.compile(r"(?<![\w.])(?:sqrt\(|\(|-?\d+(?:\.\d+)?)(?:sqrt\(|[()+\-*/]|\d+(?:\.\d+)?|\s)*")
_TRAILING_OK = frozenset("is are equal equals to please for me thanks thank you now exactly again huh right then "
                         "quickly ? . ! , = what that it this".split())
_MAX_LEAD_WORDS = 8
_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
                  ast.Pow, ast.USub, ast.UAdd, ast.Call, ast.Name, ast.Load)


def _well_formed(expression: str) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return False
    nodes = list(ast.walk(tree))
    return (all(isinstance(n, _ALLOWED_NODES) for n in nodes)
            and all(n.id == "sqrt" for n in nodes if isinstance(n, ast.Name))
            and any(isinstance(n, (ast.BinOp, ast.Call)) for n in nodes))


def _clause_expression(clause: str) -> str | None:
    text = clause
    for pattern, repl in _REWRITES:
        text = pattern.sub(repl, text)  # type: ignore[arg-type]
    for match in _CORE.finditer(text):  # "quick 1 , add up 129 + 47 + 88": the core that is arithmetic
        core = re.sub(r"\s+", " ", match.group(0)).strip()
        if not _well_formed(core):
            continue
        lead, trailing = text[: match.start()], text[match.end():]
        if len(lead.split()) <= _MAX_LEAD_WORDS and all(w in _TRAILING_OK for w in trailing.split()):
            return core
        return None
    return None


def spoken_expression(text: str) -> str | None:
    """The arithmetic a request asks for, as an expression the calculator evaluates, or None when the
    request is not plainly a calculation: "What's seventeen times twenty-three?" -> "17 * 23",
    "Subtract 17 from 50" -> "50 - 17", "Calculate 9 squared" -> "(9 ** 2)",
    "What is 15 percent of 200, so 0.15 times 200?" -> "(15 / 100 * 200)" (the first clause that parses)."""
    digits = words_to_digits(text)
    for clause in re.split(r"\s[,;]\s(?:so|i mean|that is|or)\b|\s;\s", digits):
        expression = _clause_expression(clause.strip())
        if expression is not None:
            return expression
    return None
