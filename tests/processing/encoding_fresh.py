"""A fresh labelled set for the decoding chain: never tuned on, measured before and after.

Once the held-out set (``encoding_holdout.py``) was used to tune the decoder, it no longer
gave an honest figure on unseen text. These short texts (60-150 bytes once encoded) were
written before that tuning and are only ever measured: SMS-like and chat messages, street
signs and invoice lines, in the languages and encodings of ``encoding_samples.py``, mostly
with only one or two accented letters, the hardest case for detection.

``FRESH`` lists a ``Sample`` for every encoding of the language that can represent the
text. ``bench/encoding_accuracy.py --set fresh`` measures the chain on it and
``test_encoding.py`` holds the chain to the measured accuracy. Do not tune the decoder on
this set.
"""

# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Iterator

from .encoding_samples import ENCODINGS_BY_LANGUAGE, Sample, _encodes

FRESH_TEXTS: dict[str, tuple[str, ...]] = {
    "French": (
        "Salut, je serai en retard ce soir, garde-moi une part de gâteau stp",
        "Stationnement interdit sauf livraisons, de 7 h à 11 h du lundi au samedi",
        "Facture n° 2024-118, réf. client 5521 : 3 cartouches d'encre, total 54,90 € TTC",
    ),
    "German": (
        "Bin gleich da, der Bus hat Verspätung. Warte bitte am Eingang auf mich!",
        "Durchfahrt verboten, Anlieger frei. Parken nur mit gültigem Parkausweis.",
        "hast du morgen zeit? wir könnten zusammen ins kino gehen, so gegen acht",
    ),
    "Spanish": (
        "Llego en diez minutos, el tren va con retraso. Pide tú primero si quieres.",
        "Línea 3: dos cajas de tornillos de acero, total 23,40 euros con IVA incluido",
    ),
    "Portuguese": (
        "Oi, já cheguei em casa. Amanhã a gente conversa melhor sobre a viagem.",
        "Proibido estacionar em frente ao portão, sujeito a reboque do veículo.",
    ),
    "Polish": (
        "Będę za 10 minut, stoję w korku na moście. Zamów mi kawę, proszę.",
        "ZAKAZ WJAZDU - NIE DOTYCZY SŁUŻB MIEJSKICH I DOSTAW DO GODZ. 10",
        "Faktura nr 12/2024: usługa serwisowa drukarki, kwota 150 zł brutto",
    ),
    "Czech": (
        "Ahoj, dorazím asi o půl hodiny později, vlak má zase zpoždění.",
        "Zákaz vjezdu mimo dopravní obsluhu a vozidla s povolením městské části",
    ),
    "Hungarian": (
        "Szia, már úton vagyok, tíz perc múlva ott leszek a kávézó előtt.",
        "Behajtani tilos, kivéve célforgalom és engedéllyel rendelkező járművek.",
    ),
    "Russian": (
        "Привет! Буду через полчаса, купи хлеба по дороге, пожалуйста.",
        "Счёт № 145: заправка картриджа HP 85A, 2 шт., итого 1200 руб.",
    ),
    "Ukrainian": ("Зустрінемось біля входу в парк о шостій вечора, не запізнюйся!",),
    "Bulgarian": ("Паркирането е забранено, освен за живущите в сградата. Благодарим!",),
    "Greek": ("Έφτασα στο λιμάνι, σε περιμένω στην καφετέρια δίπλα στο εκδοτήριο.",),
    "Turkish": (
        "Toplantı yarına ertelendi, lütfen herkese haber ver. Saat on gibi.",
        "Park etmek yasaktır, aksi halde araç çekilecektir. Zabıta Müdürlüğü",
    ),
    "Japanese": ("今駅の北口で待っています。着いたら電話かメッセージで連絡してください。",),
    "Korean": ("지금 막 출발했어요. 30분 정도 걸릴 것 같아요. 먼저 주문하고 기다려 주세요!",),
    "Simplified Chinese": ("您的快递已放在小区门口的快递柜里，取件码是8246，请尽快领取，谢谢。",),
    "Traditional Chinese": ("本停車場僅供本大樓住戶使用，違規停放之車輛將予以拖吊，敬請配合。",),
    "English": (
        "Running late, save me a seat please",
        "Invoice 88: 2 x toner, total 96.00 GBP",
    ),
}


def _fresh() -> Iterator[Sample]:
    for language, encodings in ENCODINGS_BY_LANGUAGE.items():
        for encoding in encodings:
            for text in FRESH_TEXTS[language]:
                if _encodes(text, encoding):
                    yield Sample(language, encoding, "short", text)


FRESH = list(_fresh())
