"""Small built-in multilingual training corpus for the tiny test tokenizer.

The text is deliberately plain and deterministic: the tokenizer trained on it must
be byte-for-byte identical on every build.
"""

from __future__ import annotations

_PARAGRAPHS = (
    # English
    "Gemma is a family of lightweight, state-of-the-art open models built from the same research "
    "and technology used to create the Gemini models. The models are text-to-text, decoder-only "
    "large language models, available in English, with open weights, pre-trained variants, and "
    "instruction-tuned variants. Gemma models are well-suited for a variety of text generation "
    "tasks, including question answering, summarization, and reasoning. Their relatively small "
    "size makes it possible to deploy them in environments with limited resources such as a "
    "laptop, desktop or your own cloud infrastructure.",
    "The quick brown fox jumps over the lazy dog. Hello, world! How are you today? I am fine, "
    "thank you. What is the capital of France? The capital of France is Paris. Please describe "
    "this image in one sentence. Transcribe the following audio clip. Write a short poem about "
    "the sea, the mountains, the rivers and the sky. Tell me a story about a robot who learns to "
    "paint. Explain how a transformer neural network works, step by step.",
    "A server receives requests over gRPC, batches them, and streams tokens back to the client. "
    "Each request has a prompt, sampling parameters, a maximum number of tokens, a temperature, "
    "a top-p value, and optional stop sequences. The router balances load across replicas and "
    "reports metrics such as latency, throughput, queue depth and time to first token.",
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n\nfor i in range(10):\n    print(i * 2)\n"
    '{"name": "gemma", "size": 128, "layers": [1, 2, 3], "ok": true}',
    # French
    "Bonjour tout le monde ! Comment allez-vous aujourd'hui ? Le chat dort sur le canapé pendant "
    "que la pluie tombe doucement sur la ville. Nous avons mangé une délicieuse tarte aux pommes "
    "et bu un café très chaud. La capitale de la France est Paris, une ville magnifique.",
    # German
    "Guten Morgen! Wie geht es Ihnen? Der schnelle braune Fuchs springt über den faulen Hund. "
    "Wir fahren morgen mit dem Zug nach Berlin, München und Hamburg. Die Straße ist schön und "
    "die Bäume sind grün. Können Sie mir bitte helfen?",
    # Spanish
    "¡Hola, mundo! ¿Cómo estás? El niño juega en el parque con su perro mientras el sol brilla. "
    "Mañana vamos a la playa para nadar y comer paella. La canción que escuchamos ayer era muy "
    "bonita. Muchas gracias por tu ayuda.",
    # Italian / Portuguese
    "Buongiorno! Oggi il tempo è bellissimo e andiamo a mangiare una pizza. Olá, tudo bem? "
    "Eu gosto muito de ler livros e ouvir música. A cidade de Lisboa é linda à noite.",
    # Russian
    "Привет, мир! Как дела? Сегодня хорошая погода, и мы идём гулять в парк. Москва — столица "
    "России. Спасибо за помощь, до свидания!",
    # Japanese / Chinese / Korean
    "こんにちは、世界！今日はいい天気ですね。私は東京に住んでいます。ありがとうございます。"
    "你好，世界！今天天气很好。我喜欢学习中文和编程。谢谢你的帮助。"
    "안녕하세요, 세계! 오늘 날씨가 좋네요. 감사합니다.",
    # Hindi / Arabic
    "नमस्ते दुनिया! आप कैसे हैं? मरहबा بالعالم! كيف حالك اليوم؟ شكرا جزيلا.",
)

_WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case "
    "point government company number group problem fact model token image audio text server client "
    "request response stream batch cache memory engine replica router metric latency prompt answer "
    "question language vision sound picture music voice camera color light water fire earth air "
    "red green blue yellow black white small large fast slow happy quiet bright dark warm cold"
).split()


def training_corpus() -> list[str]:
    """Return the deterministic list of training texts for the tiny tokenizer."""
    texts = list(_PARAGRAPHS)
    # Deterministic filler: word pairs and numbers give the trainer more merges to learn.
    for i, word in enumerate(_WORDS):
        other = _WORDS[(i * 7 + 3) % len(_WORDS)]
        texts.append(f"The {word} and the {other}. A {other} {word} is {i} times {word}s.")
    texts.append(" ".join(str(n) for n in range(0, 1000, 7)))
    return texts
