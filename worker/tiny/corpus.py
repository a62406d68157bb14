"""A small built-in English/code corpus for training the tiny tokenizer (no downloads).

`corpus_lines()` is a pure function of this file: hand-written lines plus deterministic templates.
"""

from __future__ import annotations

PROSE = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
A language model predicts the next token given all of the tokens that came before it.
Serving a large model well means batching requests, caching state and keeping the GPU busy.
The scheduler admits new requests when there is enough memory for their key and value cache.
Linear attention keeps a fixed-size recurrent state instead of a cache that grows with length.
Each expert is a small feed-forward network, and the router picks a few experts for every token.
When the request finishes, its memory is returned to the pool and reused by the next request.
She opened the window, looked at the river, and wrote a short letter to her old friend.
In the morning the market was full of people buying bread, cheese, apples and fresh fish.
He said that the meeting would start at nine o'clock and should not take more than an hour.
Please summarise the following paragraph in one sentence and keep the important numbers.
The weather today is cloudy with a chance of rain in the afternoon and a cool breeze at night.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
How many days are there in a leap year? There are 366 days in a leap year.
Write a function that returns the sum of the squares of the first n natural numbers.
The train leaves the station at 7:45 and arrives in the city about two hours later.
Thank you for your question. Here is a step by step explanation of the solution.
First, we compute the gradient. Then, we update the parameters with a small learning rate.
The history of computing is a story of people who wanted machines to do arithmetic for them.
Good software is tested, documented, and simple enough that the next person can change it.
If the test fails, read the error message carefully before you change any of the code.
They walked along the beach, collecting shells and talking about their plans for the summer.
The library closes at six on weekdays and at four on Saturdays; it is closed on Sundays.
A prime number has exactly two divisors: one and itself. The first primes are 2, 3, 5, 7, 11.
The recipe needs two cups of flour, one egg, a pinch of salt and half a cup of warm milk.
Our results show that the new method is faster, uses less memory, and is easier to maintain.
I think the answer is correct, but let me check the calculation once more to be sure.
Tokens are the basic units of text that the model reads and writes, one at a time.
The server returned an error because the request was too long for the context window.
Speculative decoding drafts several tokens cheaply and verifies them with the large model.
Unicode works too: café, naïve façade, Grüße aus München, 東京, Привет, ¿qué tal? 👋
"""

CODE = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Request:
    def __init__(self, rid: str, prompt: list[int], max_tokens: int = 16) -> None:
        self.rid = rid
        self.prompt = prompt
        self.output: list[int] = []
        self.finished = False

    def append(self, token: int) -> None:
        self.output.append(token)
        if len(self.output) >= self.max_tokens:
            self.finished = True


import torch
import torch.nn.functional as F

x = torch.randn(4, 8)
y = F.softmax(x, dim=-1)
print(y.sum(dim=-1))
for i, value in enumerate(values):
    if value is None:
        continue
    result[key] = value * 2 + 1
with open("config.json", "r", encoding="utf-8") as f:
    config = json.load(f)
return {"hidden_size": 2048, "num_layers": 48, "vocab_size": 151936}
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%d: %s\\n", i, argv[i]);
    }
    return 0;
}
fn main() {
    let v: Vec<u32> = (0..10).map(|x| x * x).collect();
    println!("{:?}", v);
}
function add(a, b) { return a + b; }
const items = [1, 2, 3].map((x) => x * 2);
SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name ORDER BY name;
$ pip install --upgrade torch transformers safetensors
$ python -m pytest tests/unit -q
{"role": "user", "content": "Hello, who are you?"}
{"role": "assistant", "content": "I am a helpful assistant."}
'''

_SUBJECTS = ("the model", "the server", "a student", "my friend", "the teacher", "our team",
             "the scheduler", "the old man", "a small robot", "the researcher", "the kernel")
_VERBS = ("reads", "writes", "computes", "checks", "builds", "finds", "sends", "loads",
          "explains", "returns", "prints", "updates", "stores")
_OBJECTS = ("a long document", "the next token", "three numbers", "the answer", "a new plan",
            "the weights", "an error message", "the first request", "a short story", "the cache",
            "every layer", "the final result")
_TAILS = ("before noon.", "in the evening.", "very quickly.", "with great care.",
          "again and again.",
          "for the whole day.", "without any help.", "on the second try.", "as expected.")
_NAMES = ("value", "count", "index", "total", "state", "token", "layer", "weight", "batch", "size")
_OPS = ("+", "-", "*", "//", "%")


def _sentences(n: int) -> list[str]:
    """Deterministic template sentences: cycle through the word lists with coprime strides."""
    lines = []
    for i in range(n):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        v = _VERBS[(3 * i + 1) % len(_VERBS)]
        o = _OBJECTS[(5 * i + 2) % len(_OBJECTS)]
        t = _TAILS[(7 * i + 3) % len(_TAILS)]
        lines.append(f"{s[0].upper()}{s[1:]} {v} {o} {t}")
    return lines


def _code_lines(n: int) -> list[str]:
    """Deterministic one-line Python statements with names, operators and numbers."""
    lines = []
    for i in range(n):
        a = _NAMES[i % len(_NAMES)]
        b = _NAMES[(3 * i + 2) % len(_NAMES)]
        op = _OPS[i % len(_OPS)]
        lines.append(f"    {a}_{i % 7} = {b} {op} {(i * 37) % 1000}  # step {i}")
    return lines


def _arithmetic(n: int) -> list[str]:
    """Question/answer lines with numbers, so digits and punctuation get merges too."""
    lines = []
    for i in range(n):
        x, y = (i * 17) % 97 + 3, (i * 29) % 89 + 2
        lines.append(f"Q: What is {x} plus {y}? A: {x} + {y} = {x + y}.")
    return lines


def corpus_lines() -> list[str]:
    """All training lines, in a fixed order (about 400 lines)."""
    return (PROSE.splitlines() + CODE.splitlines() + _sentences(160) + _code_lines(80)
            + _arithmetic(80))
