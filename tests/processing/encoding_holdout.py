"""A held-out labelled set for the decoding chain, no longer unseen: see below.

The cost weights of ``docqueue_app/processing/encoding.py`` were tuned on
``encoding_samples.py``, so its score there overstates the accuracy on unseen text. These
texts are for the same languages and encodings, with the same length classes (60-150 bytes
and 700-2000 bytes once encoded), but on other topics and vocabulary: job adverts, weather
reports, complaint letters, product descriptions, dialogue, legal notices, menus and lists
of addresses. They include the awkward cases of real documents: short texts with one or
two accented letters, all-caps headings, ASCII code and URLs around a few accented words,
prices with currency signs, typographic quotes and dashes (cp1252 and its neighbours only).

``HOLDOUT`` lists a ``Sample`` for every encoding of the language that can represent the
text. ``bench/encoding_accuracy.py --set holdout`` measures the chain on it and
``test_encoding.py`` holds the chain to the measured accuracy.

This set was measured untouched (102 of 111 exact), then its nine failures (marked below)
guided the rules added since: the function-word language guess, the prior cost of rare
code pages and symbols standing where a letter must be. It is now tuned on, like
``encoding_samples.py``; ``encoding_fresh.py`` is the set that gives the honest figure.
"""

# The texts are meant to hold Cyrillic, Greek and full-width letters that look Latin.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

from .encoding_samples import ENCODINGS_BY_LANGUAGE, Sample, _encodes

HOLDOUT_TEXTS: dict[str, dict[str, tuple[str, ...]]] = {
    "French": {
        "short": (
            "AVIS AUX LOCATAIRES : COUPURE D'EAU PRÉVUE LUNDI DE 8 H À 12 H",
            "Rendez-vous à la gare de Nantes demain matin, quai numéro 4, vers 7 h 30.",
            # Was misread (latin_1 and cp1252) as cp1250, "Paramčtres": one accented
            # letter among code and a URL. Right since the function words ("puis",
            # "et", "sur") say French, which has no č.
            "Lancez `pip install docqueue`, puis ouvrez http://localhost:8000 et "
            "cliquez sur Paramètres.",
            # cp1252 only: the euro sign, the en dash, typographic apostrophes and ellipsis.
            "Menu du jour à 14,50 € : velouté de potiron, blanquette, tarte – café offert.",
            "Le propriétaire m’a répondu qu’il n’était « pas pressé » de réparer la chaudière…",
        ),
        "long": (
            """\
Bulletin météo du jeudi 14 novembre

Après une nuit fraîche et dégagée, les brouillards seront nombreux au lever du jour dans \
les vallées de la Loire et de la Saône, avec une visibilité parfois réduite à moins de \
cent mètres. Ils se dissiperont lentement en fin de matinée.

L'après-midi, le soleil s'imposera sur la majeure partie du pays. Près de la Manche, en \
revanche, un ciel voilé annoncera l'arrivée d'une perturbation qui gagnera la Bretagne \
en soirée, accompagnée de pluies faibles et d'un vent de sud-ouest soufflant jusqu'à \
60 km/h sur les côtes.

Les températures minimales iront de 1 à 5 °C dans l'intérieur, localement -2 °C en \
Auvergne, et de 8 à 11 °C sur le littoral atlantique. Les maximales seront comprises \
entre 12 et 15 °C, jusqu'à 18 °C près de Perpignan et de Nice.

Pour le week-end, la tendance reste incertaine : un temps plus humide et plus doux \
devrait s'installer samedi, avant le retour des éclaircies dimanche.
""",
            # cp1252 only: œ, the euro sign, en dashes and typographic apostrophes.
            """\
OFFRE D’EMPLOI – CUISINIER(ÈRE) EN CDI

La brasserie « Le Petit Marché », au cœur du vieux Rennes, recherche un(e) \
cuisinier(ère) pour compléter son équipe dès le 1er mars. Vous travaillerez avec des \
produits frais et locaux, sous la responsabilité de notre chef.

Vos missions :
– préparer les entrées, les plats du jour et les desserts ;
– assurer la mise en place et le respect des règles d’hygiène ;
– gérer les commandes auprès de nos fournisseurs.

Profil recherché : une première expérience en restauration, le sens de l’organisation \
et le goût du travail en équipe. Débutant(e) motivé(e) accepté(e).

Conditions : 39 heures par semaine, du mardi au samedi, deux jours de repos consécutifs. \
Salaire : 2 100 € à 2 400 € brut par mois selon expérience, mutuelle et repas pris en \
charge.

Envoyez votre CV et une lettre de motivation à recrutement@petitmarche.fr, ou passez \
nous voir entre 15 h et 17 h au 12, rue Saint-Georges.
""",
        ),
    },
    "German": {
        "short": (
            "WICHTIGER HINWEIS: GEÄNDERTE ÖFFNUNGSZEITEN DES BÜRGERAMTS AB 1. MÄRZ",
            # These two, with a single ü, were misread (latin_1 and cp1252) as cp866:
            # "zur№ckschicken", "ausf№hren". Right since cp866 has a prior cost and a
            # symbol between two letters costs as one.
            "Bitte das Formular bis Freitag an die Personalabteilung zurückschicken.",
            "Nach dem Update `git pull` ausführen und den Server mit ./start.sh neu starten.",
            # cp1252 only: the en dash, the euro sign and German typographic quotes.
            "Der Akku hält bis zu 12 Stunden – Preis: 89,99 € inkl. MwSt. und Versand.",
            "„Das haben wir so nicht bestellt“, schrieb die Kundin über die gelieferte Küche.",
        ),
        "long": (
            """\
Sehr geehrte Damen und Herren,

am 3. Oktober habe ich bei Ihnen eine Waschmaschine des Modells WM 714 bestellt, die \
laut Bestätigung innerhalb von fünf Werktagen geliefert werden sollte. Geliefert wurde \
sie erst nach drei Wochen, und beim Auspacken stellte ich fest, dass die Tür verzogen \
ist und sich nicht richtig schließen lässt.

Ihr Kundendienst hat mir daraufhin zweimal einen Techniker angekündigt. Beide Male habe \
ich mir einen halben Tag freigenommen, und beide Male ist niemand gekommen. Auf meine \
E-Mails vom 28. Oktober und vom 4. November habe ich keine Antwort erhalten.

Ich fordere Sie deshalb auf, das Gerät bis spätestens 20. November abzuholen und mir den \
Kaufpreis von 549 Euro zu erstatten. Sollte ich bis dahin nichts von Ihnen hören, werde \
ich mich an die Verbraucherzentrale wenden.

Meine Kundennummer lautet 40-118-572, die Rechnung und Fotos der beschädigten Tür \
füge ich bei.

Mit freundlichen Grüßen
Jürgen Oßwald
Lindenstraße 9, 97070 Würzburg
""",
            # cp1252 only: the euro sign, dashes, typographic quotes and the bullet.
            """\
Unsere Neuheiten im Herbst

• Wanderrucksack „Alpspitz“ – 28 Liter, wasserabweisendes Gewebe, gepolsterte \
Hüftflossen und ein separates Fach für die Trinkblase. Gewicht: nur 950 g. \
Preis: 79,90 €.

• Thermoskanne „Morgenrot“ – hält Getränke bis zu 24 Stunden heiß oder kühl, \
spülmaschinenfest, auslaufsicher. In fünf Farben erhältlich. Preis: 24,95 €.

• Funktionsjacke „Föhn“ – atmungsaktiv, winddicht und mit abnehmbarer Kapuze; \
ideal für Übergangszeiten und Radtouren. Größen S bis XXL. Preis: 129,00 €.

Alle Artikel sind ab sofort in unseren Filialen in München, Nürnberg und Göttingen \
sowie im Onlineshop erhältlich. Ab einem Bestellwert von 50 € liefern wir versandkostenfrei \
– bei Nichtgefallen nehmen wir die Ware innerhalb von 30 Tagen zurück.
""",
        ),
    },
    "Spanish": {
        "short": (
            "AVISO: EL ASCENSOR ESTARÁ FUERA DE SERVICIO HASTA EL PRÓXIMO LUNES",
            "Se alquila piso de tres habitaciones en Zaragoza, cerca de la estación.",
            "Descarga el archivo desde https://example.com/docs y ábrelo con cualquier editor.",
            # cp1252 only: em dashes for dialogue, the euro sign.
            "—¿Vienes a cenar esta noche? —No puedo, mañana tengo un examen muy temprano.",
            "Menú del día: gazpacho, merluza a la plancha y flan casero, 13,50 € con bebida.",
        ),
        "long": (
            """\
AVISO LEGAL

En cumplimiento de la Ley 34/2002, de servicios de la sociedad de la información y de \
comercio electrónico, se informa de que este sitio web es titularidad de Talleres \
Muñoz Hermanos, S.L., con domicilio social en la calle Alcalá, 118, 28009 Madrid, e \
inscrita en el Registro Mercantil de Madrid, tomo 12.345, folio 67, hoja M-98765.

El acceso a esta página es gratuito y atribuye la condición de usuario, que acepta \
las presentes condiciones. El usuario se compromete a hacer un uso adecuado de los \
contenidos y a no emplearlos para actividades ilícitas o contrarias a la buena fe.

Todos los textos, imágenes, logotipos y diseños son propiedad de la empresa o de \
terceros que han autorizado su uso. Queda prohibida su reproducción, distribución o \
modificación sin autorización previa y por escrito.

La empresa no se hace responsable de los daños que pudieran derivarse de interrupciones \
del servicio, virus informáticos o errores en la información publicada. Para cualquier \
consulta, puede dirigirse a info@talleresmunoz.es o al teléfono 915 555 012.
""",
            # cp1252 only: em dashes for dialogue, typographic quotes, the euro sign.
            """\
—Buenos días. ¿Tienen todavía el sofá cama que vi ayer en el escaparate?

—Sí, señora, nos queda uno en gris y otro en azul marino. ¿Quiere verlos?

—El gris, por favor. ¿Cuánto cuesta con la entrega incluida?

—Son 640 €, y el transporte es gratuito dentro de Sevilla. Si vive fuera, le cobramos \
25 € más. Además, este mes regalamos los cojines.

—¿Y se puede pagar a plazos? Es que acabamos de mudarnos y el piso está casi vacío.

—Claro, en seis meses sin intereses. Sólo necesito su DNI y una cuenta bancaria. \
Le advierto que el modelo “Lisboa” se está agotando; si lo quiere, mejor reservarlo hoy.

—Entonces me lo llevo. ¿Cuándo me lo traerían?

—El jueves por la mañana, entre las nueve y las dos. El repartidor la llamará media hora \
antes. ¿Me da su dirección?

—Avenida de la Constitución, 27, tercero izquierda. Hay ascensor, pero es pequeño…

—No se preocupe, lo subimos desmontado y se lo dejamos montado en el salón.
""",
        ),
    },
    "Portuguese": {
        "short": (
            "ATENÇÃO: A PISCINA MUNICIPAL ESTARÁ FECHADA PARA MANUTENÇÃO ATÉ SEXTA",
            "Vendo bicicleta em ótimo estado, pouco usada, com capacete e cadeado.",
            "Para ativar a conta, execute login --token e confirme o código no e-mail.",
            # cp1252 only: the euro sign and the en dash.
            "Promoção: camisola de lã por 29,90 € – só esta semana, enquanto houver stock.",
        ),
        "long": (
            """\
Catálogo de primavera

Cadeira de jardim Sintra. Estrutura em alumínio lacado, assento e encosto em tecido \
resistente ao sol e à chuva. Dobrável, ocupa pouco espaço no inverno. Disponível em \
verde, branco e cinzento.

Mesa extensível Évora. Tampo em madeira maciça de pinho, com acabamento a óleo natural. \
Fechada, serve quatro pessoas; aberta, até oito. Pés reguláveis para pavimentos \
irregulares. Montagem simples, com instruções em português.

Candeeiro de pé Aveiro. Cúpula de linho cru e base de cerâmica pintada à mão por \
artesãos da região. Compatível com lâmpadas LED até 12 W. Interruptor de pedal.

Conjunto de toalhas Algarve. Três peças em algodão 100%, com 550 g/m², macias e muito \
absorventes. Podem ser lavadas a 60 graus sem perder a cor.

Todos os artigos têm garantia de dois anos. Entregas grátis em Portugal continental \
para compras superiores a cem euros; nas ilhas, consulte as condições na loja.
""",
            # cp1252 only: typographic quotes, the euro sign and the en dash.
            """\
OFERTA DE EMPREGO – RECECIONISTA (M/F)

O Hotel “Quinta do Rio”, situado em Ponte de Lima, procura rececionista para integrar a \
sua equipa a partir de junho.

Funções: atendimento e acolhimento de hóspedes em português, inglês e espanhol; gestão \
de reservas e faturação; apoio ao serviço de pequenos-almoços quando necessário.

Requisitos: 12.º ano ou formação na área do turismo; experiência mínima de um ano em \
funções semelhantes; conhecimentos de informática na óptica do utilizador; \
disponibilidade para trabalhar por turnos, incluindo fins de semana e feriados.

Oferecemos: contrato a termo com possibilidade de integração nos quadros; vencimento \
base de 950 € mais subsídio de alimentação; formação contínua; alojamento para quem \
vier de fora da região.

As candidaturas, com currículo e fotografia, devem ser enviadas até 15 de maio para \
rh@quintadorio.pt. Só serão contactados os candidatos selecionados para entrevista.
""",
        ),
    },
    "Polish": {
        "short": (
            # Was misread as cp1252: "PONIEDZIA£EK NIE BÊDZIE ... D£UGIEJ" (all capitals).
            # Right since the function words ("w", "nie", "przy") say Polish, which has
            # no ê, and "£" between two letters costs.
            "UWAGA! W PONIEDZIAŁEK NIE BĘDZIE WODY W BUDYNKU PRZY UL. DŁUGIEJ 12",
            "Proszę oddzwonić do biura w sprawie faktury po godzinie dziesiątej rano.",
            "Cena: 149,99 zł – „promocja” obowiązuje do końca miesiąca lub wyczerpania zapasów.",
        ),
        "long": (
            """\
Punkty odbioru przesyłek – lista adresów

1. Kraków, ul. Wielicka 28, sklep spożywczy „Pod Lipą”, pon.–sob. 7:00–21:00
2. Łódź, ul. Piotrkowska 152, kiosk przy przystanku tramwajowym
3. Gdańsk, ul. Grunwaldzka 411, stacja paliw, czynne całą dobę
4. Wrocław, pl. Świętego Macieja 5, księgarnia „Żółty Słoń”
5. Poznań, os. Bolesława Śmiałego 19, apteka, pon.–pt. 8:00–20:00
6. Bielsko-Biała, ul. Żywiecka 14, punkt ksero i poligrafii
7. Zielona Góra, ul. Wyszyńskiego 23, kwiaciarnia „Róża”
8. Częstochowa, al. Najświętszej Maryi Panny 47, sklep z pamiątkami
9. Świnoujście, ul. Dąbrowskiego 3, biuro podróży, tylko w sezonie letnim
10. Rzeszów, ul. Hetmańska 61, salon prasowy w centrum handlowym

Przesyłka czeka w wybranym punkcie przez siedem dni roboczych. Przy odbiorze należy \
podać kod z wiadomości SMS i okazać dokument tożsamości. Jeżeli paczka nie zostanie \
odebrana w terminie, wróci do nadawcy, a opłata za przechowanie nie będzie zwracana.
""",
        ),
    },
    "Czech": {
        "short": (
            "POZOR: OD PONDĚLÍ BUDE UZAVŘENA SILNICE MEZI TÁBOREM A PÍSKEM",
            "Objednávku vám pošleme zítra ráno, jakmile dorazí zboží ze skladu.",
            "Pro přihlášení použijte adresu https://portal.example.cz a své heslo.",
        ),
        "long": (
            """\
Hledáme skladníka / skladnici

Společnost Dřevo Plus s. r. o., výrobce nábytku z masivu, přijme do svého skladu v \
Českých Budějovicích nového kolegu nebo kolegyni na hlavní pracovní poměr.

Náplň práce:
- příjem a výdej zboží, kontrola dodacích listů;
- vychystávání objednávek a balení zásilek pro přepravce;
- obsluha vysokozdvižného vozíku a evidence v informačním systému.

Požadujeme spolehlivost, fyzickou zdatnost a ochotu pracovat ve dvousměnném provozu. \
Průkaz na vysokozdvižný vozík je výhodou, případně vám ho zaplatíme. Znalost práce na \
počítači na uživatelské úrovni.

Nabízíme mzdu od 32 000 Kč hrubého měsíčně, příplatky za odpolední směny, pět týdnů \
dovolené, stravenky a příspěvek na penzijní spoření. Zaškolení je samozřejmostí.

Životopis pošlete na adresu prace@drevoplus.cz nebo se přijďte osobně podívat do areálu \
v Pražské ulici číslo 41, každý všední den od osmi do čtrnácti hodin.
""",
        ),
    },
    "Hungarian": {
        "short": (
            "FIGYELEM! A LÉPCSŐHÁZ FELÚJÍTÁSA MIATT A LIFT NEM ÜZEMEL PÉNTEKIG",
            "A csomagot holnap délután kézbesítjük, kérjük, legyen otthon.",
            "Az ár 12 990 Ft, a szállítás Budapesten belül ingyenes, a csere díjmentes.",
        ),
        "long": (
            """\
Időjárás-jelentés, szerda

Az éjszaka folyamán nyugat felől egy hidegfront éri el az országot, amely mögött \
megerősödik, helyenként viharossá fokozódik az északnyugati szél. A Dunántúlon már \
hajnalban, keleten a délelőtti órákban várható zápor, zivatar, néhol jégeső is.

Napközben a felhőzet fokozatosan felszakadozik, és délután már sok helyen kisüt a nap. \
A legmagasabb nappali hőmérséklet 16 és 21 fok között alakul, a Tiszántúlon még 23 fok \
is lehet. A Balaton térségében erős széllökések miatt első fokú viharjelzés van \
érvényben, a strandokon fürdeni nem ajánlott.

Csütörtökön hűvös, szeles idő lesz, reggel a fagyzugos völgyekben gyenge talaj menti \
fagy is előfordulhat. Pénteken és szombaton anticiklon hatására csendes, napos, \
enyhébb idő várható, vasárnap azonban ismét növekszik a felhőzet, és délnyugat felől \
eső érkezik. Az előrejelzés szerint a hétvégén Győrben, Pécsen és Szegeden is 20 fok \
fölé emelkedik a hőmérséklet.
""",
        ),
    },
    "Russian": {
        "short": (
            "ВНИМАНИЕ! В ЧЕТВЕРГ С 9:00 ДО 17:00 БУДЕТ ОТКЛЮЧЕНА ГОРЯЧАЯ ВОДА",
            # Was misread in cp1251 (not in KOI8-R) as mac_cyrillic, "—качайте": the
            # capital С (the only capital) is an em dash there, and the lower case but я
            # is the same. Right since a code page outside the candidates has a prior cost.
            "Скачайте архив с https://example.ru/files и распакуйте его в папку data.",
            # cp1251 only: KOI8-R has no №, guillemets or em dash.
            "Заказ № 4521 «Кофемашина» доставлен — оплата 12 990 руб. при получении.",
        ),
        "long": (
            """\
Генеральному директору ООО "Уютный дом"
от Смирновой Татьяны Викторовны

Претензия

15 августа я заключила с вашей компанией договор на изготовление и установку кухонного \
гарнитура. Стоимость заказа, 186 000 рублей, оплачена полностью в день подписания \
договора. Согласно пункту 3.2, кухня должна была быть установлена не позднее 30 сентября.

До сих пор гарнитур установлен лишь частично: отсутствуют две дверцы верхних шкафов, \
столешница имеет сколы, а ящик под мойкой не закрывается. Ваши сотрудники трижды \
переносили визит мастера, ссылаясь на задержку поставки фурнитуры.

На основании закона о защите прав потребителей прошу в течение десяти дней устранить \
все недостатки и выплатить неустойку за нарушение сроков выполнения работ. В противном \
случае я буду вынуждена обратиться в суд и в Роспотребнадзор.

Копии договора, чека и фотографии повреждений прилагаю.

Ответ прошу направить по адресу: г. Екатеринбург, ул. Малышева, д. 84, кв. 17.

Дата: 12 октября. Подпись: Смирнова Т. В.
""",
        ),
    },
    "Ukrainian": {
        "short": (
            "ОГОЛОШЕННЯ: ЗБОРИ МЕШКАНЦІВ ВІДБУДУТЬСЯ В НЕДІЛЮ О ЧЕТВЕРТІЙ",
            "Ґанок біля їдальні пофарбували, тому сьогодні заходьте через інші двері.",
            "Вакансія: водій категорії C, зарплата від 25 000 грн, графік 5/2.",
        ),
        "long": (
            """\
Прогноз погоди на вихідні

У суботу погоду в Україні визначатиме антициклон, тому на більшій частині території \
очікується суха й сонячна погода. Лише на крайньому заході, у Закарпатті та на \
Прикарпатті, ввечері можливі короткочасні дощі з грозами. Вітер південно-східний, \
помірний. Температура вночі від 8 до 13 градусів, удень від 22 до 27, на півдні \
країни до 29 градусів тепла.

У неділю з заходу насуватиметься атмосферний фронт. У Львові, Тернополі та Рівному \
пройдуть зливи, місцями з градом, а пориви вітру сягатимуть 15-20 метрів за секунду. \
У Києві, Полтаві та Харкові ще збережеться тепла погода без істотних опадів, однак \
надвечір хмарність збільшиться.

Синоптики радять водіям бути обережними на дорогах через ожеледицю в гірських районах \
і знижену видимість під час злив. Відпочивальникам на узбережжі Одещини рекомендують \
не запливати далеко за буйки: на морі очікується хвилювання до трьох балів.
""",
        ),
    },
    "Bulgarian": {
        "short": (
            "СЪОБЩЕНИЕ: ПОЩАТА В СЕЛОТО ЩЕ РАБОТИ САМО ДО ОБЯД В СЪБОТА И НЕДЕЛЯ",
            "Търсим продавач-консултант за магазин за обувки в центъра на Пловдив.",
            "Цена: 24,90 лв. за килограм — само тази седмица в нашия магазин.",
        ),
        "long": (
            """\
Механа "Старата лоза" - обедно меню

Супи
Таратор със студено кисело мляко, краставици и орехи - 4,50 лв.
Шкембе чорба с чесън и оцет - 5,20 лв.
Боб чорба по манастирски - 4,80 лв.

Салати
Шопска салата с домати, краставици, печени чушки и сирене - 6,90 лв.
Снежанка с цедено мляко и копър - 5,50 лв.

Основни ястия
Кавърма в гювече с гъби и яйце - 13,80 лв.
Пълнени чушки с кайма и ориз, със сос от кисело мляко - 11,40 лв.
Кюфтета на скара, три броя, с пържени картофи - 10,90 лв.
Пъстърва на тиган с лимон и гарнитура от зеленчуци - 15,60 лв.

Десерти
Баница с тиква и канела - 4,20 лв.
Крем карамел по домашна рецепта - 4,00 лв.

Обедното меню се предлага от понеделник до петък между 11:30 и 15:00 часа. \
За групи над десет души е необходима предварителна резервация по телефона.
""",
        ),
    },
    "Greek": {
        "short": (
            "ΑΝΑΚΟΙΝΩΣΗ: ΤΟ ΦΑΡΜΑΚΕΙΟ ΘΑ ΕΙΝΑΙ ΚΛΕΙΣΤΟ ΤΗΝ ΚΥΡΙΑΚΗ 12 ΜΑΪΟΥ",
            "Άλλαξε ο κωδικός; Πήγαινε στο https://example.gr/reset και ακολούθησε τις οδηγίες.",
            "Ο καιρός αύριο: βροχές στη Θεσσαλονίκη και ηλιοφάνεια στην Κρήτη.",
            # cp1253 only: ISO 8859-7 has no em dash.
            "Τιμή: 15 € το κιλό — «φρέσκο ψάρι» από τη Χαλκίδα, κάθε Παρασκευή.",
        ),
        "long": (
            """\
Νέα προϊόντα του μήνα

Ελαιόλαδο «Λιόφυτο», έξτρα παρθένο, από ελιές Κορωνέικης ποικιλίας της Μεσσηνίας. \
Ψυχρής έκθλιψης, με οξύτητα κάτω από 0,3%. Συσκευασία τενεκέ πέντε λίτρων: 42 €.

Θυμαρίσιο μέλι από τα Κύθηρα, σε γυάλινο βάζο των 450 γραμμαρίων. Πυκνό, αρωματικό, \
χωρίς καμία επεξεργασία. Ιδανικό με γιαούρτι ή σε γλυκά του ταψιού: 11,50 €.

Φέτα ΠΟΠ σε άλμη, ώριμη τουλάχιστον τρεις μήνες σε ξύλινα βαρέλια, από τυροκομείο της \
Ηπείρου. Διατίθεται σε δοχείο του ενός κιλού: 13,80 €.

Άγριο τσάι του βουνού από τον Όλυμπο, συλλεγμένο με το χέρι και αποξηραμένο στη σκιά. \
Συσκευασία 50 γραμμαρίων: 3,90 €.

Όλα τα προϊόντα αποστέλλονται με courier σε όλη την Ελλάδα εντός δύο εργάσιμων ημερών. \
Για παραγγελίες άνω των 60 ευρώ τα μεταφορικά είναι δωρεάν.
""",
        ),
    },
    "Turkish": {
        "short": (
            "DİKKAT: BİNA GİRİŞİNDEKİ ASANSÖR BAKIM NEDENİYLE CUMAYA KADAR ÇALIŞMIYOR",
            # Was misread as hp_roman8: "yar»n —Þlen" for "yarın öğlen". Right since
            # hp_roman8 has a prior cost and "»" between two letters costs.
            "Kargonuz yarın öğlen saatlerinde adresinize teslim edilecektir.",
            "Fiyat: 249,90 TL – ücretsiz kargo, 14 gün içinde koşulsuz iade hakkı.",
        ),
        "long": (
            """\
- Merhaba, bu ceketin bir beden büyüğü var mı acaba?

- Bakayım hemen. Lacivert olanından kalmadı ama siyahı ve gri olanı var. Hangisini \
istersiniz?

- Siyahı deneyebilir miyim? Kabin nerede?

- Tabii, kabinler şu köşede, aynanın yanında. Buyurun.

- Çok güzel oldu, tam üstüme. Fiyatı ne kadar?

- Normal fiyatı 1.850 lira, ama bu hafta bütün kışlık ürünlerde yüzde yirmi indirim \
var. Yani size 1.480 liraya geliyor.

- Kredi kartına taksit yapıyor musunuz?

- Evet, üç taksite kadar vade farksız. Faturanızı da hemen keseyim. Değişim için on \
dört gününüz var, etiketini çıkarmamanız yeterli.

- Çok teşekkür ederim. Bir de şunu sorayım: Kadıköy'deki mağazanız pazar günü açık mı?

- Açık efendim, hafta sonu saat onda açılıp akşam dokuzda kapanıyor. İyi günlerde \
giyin!
""",
        ),
    },
    "Japanese": {
        "short": (
            "【お知らせ】年末年始は、十二月二十九日から一月三日までお休みをいただきます。",
            "詳細は https://example.jp/faq をご覧ください。ご不明な点はお気軽にどうぞ。",
            "本日のおすすめ：焼き魚定食　￥980（税込）、ご飯のおかわりは無料です。",
        ),
        "long": (
            """\
週間天気予報（関東地方）

今日は高気圧に覆われて、朝から晴れる所が多いでしょう。日中は気温が上がり、東京都心の\
最高気温は二十六度の予想です。空気が乾燥しますので、火の取り扱いに注意してください。

明日は前線を伴った低気圧が西から近づくため、次第に雲が広がり、夕方からは雨が降り出す\
見込みです。夜は雷を伴って激しく降る所もありそうです。お出かけの際は、傘をお持ちください。

あさって以降は、北よりの冷たい風が吹き、気温はぐっと下がります。週末にかけて朝晩は\
冷え込みが強まり、山沿いでは初霜が観測される可能性があります。

なお、横浜、千葉、さいたま、宇都宮、前橋の各地点の詳しい予報は、気象庁のホームページ\
でご確認いただけます。また、大雨や強風に関する警報・注意報が発表された場合は、\
テレビやラジオの最新の情報に十分ご注意ください。
""",
        ),
    },
    "Korean": {
        "short": (
            "[공지] 이번 주 토요일에는 전기 점검으로 엘리베이터를 운행하지 않습니다.",
            "자세한 내용은 www.example.co.kr 에서 확인하시기 바랍니다. 감사합니다.",
            "오늘의 메뉴: 김치찌개 8,000원, 된장찌개 7,500원, 공깃밥 추가 1,000원",
        ),
        "long": (
            """\
[채용 공고] 주식회사 한빛물류 신입 및 경력 사원 모집

저희 한빛물류는 인천과 평택에 물류센터를 운영하는 종합 물류 기업입니다. 사업 확장에 따라 \
함께 성장할 인재를 모집합니다.

모집 분야: 물류 관리, 배송 계획, 고객 상담
근무 지역: 인천광역시 서구, 경기도 평택시
근무 형태: 정규직, 주 5일 근무 (교대 근무 없음)

자격 요건: 고등학교 졸업 이상, 운전면허 소지자 우대, 엑셀 사용 가능자
우대 사항: 물류 관련 자격증 보유자, 외국어 가능자, 인근 거주자

복리 후생: 4대 보험, 퇴직금, 명절 상여금, 통근 버스 운행, 구내 식당 제공

접수 기간은 다음 달 15일까지이며, 이력서와 자기소개서를 이메일로 보내 주시기 바랍니다. \
서류 합격자에게는 개별적으로 면접 일정을 안내해 드립니다. 궁금한 점은 인사팀으로 \
문의해 주십시오.
""",
        ),
    },
    "Simplified Chinese": {
        "short": (
            "【通知】本周六上午九点至十二点小区停水，请各位住户提前做好储水准备。",
            "请访问 https://example.cn/help 下载最新版本，安装后重新启动电脑即可。",
            "本店全部商品一律八折，满200元再减¥30，活动截止到本月底，欢迎选购。",
        ),
        "long": (
            """\
用户服务协议（摘要）

一、本协议是您与本公司之间就使用本网站服务所订立的协议。请您在注册前仔细阅读本协议的\
全部内容，一旦点击“同意”，即视为您已充分理解并接受本协议的所有条款。

二、您应当妥善保管账号和密码，不得将账号转让、出借给他人使用。因您自身原因导致账号被盗\
或信息泄露的，由您自行承担相应责任。

三、您在使用服务时，不得发布违反法律法规、侵犯他人合法权益或者损害社会公共利益的内容。\
如有违反，本公司有权删除相关内容，并视情节暂停或终止提供服务。

四、本公司将依照相关法律法规保护您的个人信息，未经您的同意，不会向任何第三方提供，\
但法律另有规定的除外。

五、因不可抗力或者系统维护等原因造成服务中断的，本公司将尽快通知并及时恢复，但不承担\
由此产生的间接损失。

六、本协议的解释权归本公司所有。如发生争议，双方应友好协商解决；协商不成的，可向本公司\
所在地人民法院提起诉讼。
""",
        ),
    },
    "Traditional Chinese": {
        "short": (
            "【公告】本大樓電梯將於下週一進行年度保養，暫停使用一天，敬請見諒。",
            "詳細資訊請參考 www.example.com.tw 網站，或撥打客服專線詢問。",
            "今日特價：珍珠奶茶 NT$45，第二杯半價，優惠只到晚上九點為止。",
        ),
        "long": (
            """\
門市地址一覽

台北信義店：台北市信義區松仁路一百號一樓，營業時間上午十一點至晚上十點。
新竹竹北店：新竹縣竹北市光明六路二十五號，週一公休。
台中逢甲店：台中市西屯區文華路一百二十八號，鄰近逢甲夜市，停車較不方便。
台南安平店：台南市安平區古堡街六十號，步行可到安平古堡。
高雄左營店：高雄市左營區博愛二路三百號，高鐵站出口往南約五分鐘。
花蓮市區店：花蓮縣花蓮市中山路八十八號，提供免費寄放行李服務。
宜蘭礁溪店：宜蘭縣礁溪鄉溫泉路五十號，假日人潮眾多，建議提早前往。

各門市均可使用信用卡及行動支付，並提供外帶與網路預訂取貨服務。若遇颱風或其他天災，\
營業時間將另行公告，請以官方網站及粉絲專頁最新消息為準。如有任何問題，歡迎撥打免付費\
客服電話，由專人為您服務。

會員到店消費滿五百元即可累積點數，點數可折抵現金或兌換精美贈品，\
詳細辦法請洽各門市服務人員。
""",
        ),
    },
    "English": {
        "short": (
            "NOTICE: THE CAR PARK WILL BE CLOSED ON MONDAY",
            "Total due: £42.50 (about €49), payable by 30 June.",
            "Run `make test`, then open http://localhost:8000/ to check.",
        ),
        "long": (
            """\
Weather outlook for the weekend

Saturday will start cold and bright across most of England and Wales, with a touch of \
frost in sheltered valleys. Cloud will thicken from the west during the afternoon, and \
rain will reach Cornwall and Pembrokeshire by early evening. Highs of 9 to 12°C.

On Sunday the band of rain will move steadily north-east, turning heavy for a time over \
the Pennines and the Lake District, where 30 to 40 mm could fall on high ground. Gusts \
of 50 mph are likely on exposed coasts — ferry passengers should check with operators \
before travelling.

“It won’t be a washout everywhere,” a forecaster said. “East Anglia and Kent should stay \
mostly dry until late afternoon.”

Next week looks more settled, though nights will be chilly.
""",
        ),
    },
}


def _holdout() -> Iterator[Sample]:
    for language, encodings in ENCODINGS_BY_LANGUAGE.items():
        for encoding, (length, texts) in product(encodings, HOLDOUT_TEXTS[language].items()):
            yield from (
                Sample(language, encoding, length, t) for t in texts if _encodes(t, encoding)
            )


HOLDOUT = list(_holdout())
