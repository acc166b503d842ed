"""A labelled set for the decoding chain: natural texts, each in its common legacy encodings.

Every language has short texts (one sentence, 60-150 bytes once encoded) and a long one
(700-2000 bytes): a letter, a news item or a recipe, with the letters the language really
uses. ``SAMPLES`` lists (language, encoding, length class, text) for every encoding of the
language that can represent the text; ``labelled_bytes`` gives (bytes, expected text).
``bench/encoding_accuracy.py`` measures the chain on it and ``test_encoding.py`` holds the
chain to the measured accuracy.
"""

# The texts are meant to hold Cyrillic, Greek and full-width letters that look Latin.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

SHORT_BYTES = range(60, 151)
LONG_BYTES = range(700, 2001)

WESTERN = ("latin_1", "cp1252")

# Language -> the encodings its documents are commonly found in, without a BOM.
ENCODINGS_BY_LANGUAGE = {
    "French": WESTERN,
    "German": WESTERN,
    "Spanish": WESTERN,
    "Portuguese": WESTERN,
    "Polish": ("cp1250",),
    "Czech": ("cp1250",),
    "Hungarian": ("cp1250",),
    "Russian": ("cp1251", "koi8_r"),
    "Ukrainian": ("cp1251", "koi8_u"),  # KOI8-R has no і, ї, є, ґ
    "Bulgarian": ("cp1251",),
    "Greek": ("iso8859_7", "cp1253"),
    "Turkish": ("cp1254",),
    "Japanese": ("shift_jis",),
    "Korean": ("euc_kr",),
    "Simplified Chinese": ("gb18030",),
    "Traditional Chinese": ("big5",),
    "English": ("utf_16_le", "utf_16_be"),
}

# Few accents among many plain words: charset-normalizer read this one as Baltic cp1257
# ("Chčre", "Genčve", "brūlée"), the misreading of issue 12.
FRENCH_LETTER = """\
Chère Anne,

Merci pour ta lettre, elle m'a fait plaisir. Me voici de retour à Genève depuis \
dimanche. Le voyage s'est bien passé, malgré un peu de retard à Lyon. Le temps est \
gris et froid, mais le lac reste très beau le matin.

Samedi, nous avons dîné chez ma soeur, qui avait préparé une crème brûlée pour le \
dessert. Les enfants vont bien et travaillent sérieusement à l'école. Paul a commencé \
le piano, il joue déjà deux petits morceaux. Jean a trouvé un nouveau poste à Lausanne, \
il prend le train chaque jour et rentre tard, mais il est content de son équipe.

Est-ce que tu viendras nous voir au printemps ? Nous avons une chambre libre, tu seras \
ici chez toi. Dis bonjour à tes parents de notre part. J'attends de tes nouvelles avec \
impatience.

Bises,
Claire
"""

FRENCH_LETTER_FROM_GENEVA = """\
Chère Hélène,

Je t'écris enfin de Genève, où je suis arrivée mardi après un voyage un peu \
mouvementé : le train a été retardé à Lyon, et j'ai dû changer de quai à la dernière minute.

L'appartement est petit mais lumineux, avec une fenêtre sur le lac. Hier soir, mes \
collègues m'ont emmenée dîner dans le vieux quartier : fondue au fromage, salade de \
lentilles et, pour finir, une crème brûlée à la vanille, la meilleure que j'aie goûtée \
depuis des années.

Le travail commence lundi. Je suis à la fois impatiente et un peu inquiète, car je ne \
connais encore personne. J'espère que tu viendras me voir cet été ; on pourrait faire \
une excursion à Montreux.

Embrasse Gérard et les enfants de ma part. Réponds-moi vite !

Françoise
"""

TEXTS: dict[str, dict[str, tuple[str, ...]]] = {
    "French": {
        "short": (
            "Le garçon a renversé son café sur la tablette, du côté de la fenêtre.",
            "Pour le dessert, nous avons partagé une crème brûlée dans un café de Genève.",
            # cp1252 only: the euro sign and typographic apostrophes are not in Latin-1.
            "La facture s’élève à 45 € pour le dîner, service compris, m’a dit le serveur.",
        ),
        "long": (FRENCH_LETTER, FRENCH_LETTER_FROM_GENEVA),
    },
    "German": {
        "short": (
            "Können Sie mir sagen, wo die nächste Haltestelle für den Bus zum Flughafen ist?",
            "Die Straßenbahn fährt heute wegen einer Baustelle nur bis zum Königsplatz.",
        ),
        "long": (
            """\
Nach tagelangem Regen sind in mehreren Gemeinden im Süden Bayerns Flüsse über die Ufer \
getreten. Besonders betroffen ist die Kleinstadt Günzburg, wo Feuerwehr und Technisches \
Hilfswerk seit Donnerstag Sandsäcke füllen und Keller auspumpen. »Wir haben so etwas seit \
zwanzig Jahren nicht erlebt«, sagte der Bürgermeister am Freitagmorgen. Einige Straßen \
mussten gesperrt werden, und die Schüler der Grundschule bleiben bis Montag zu Hause.

Der Deutsche Wetterdienst erwartet für das Wochenende eine Beruhigung der Lage. Dennoch \
warnen die Behörden davor, überflutete Wege zu betreten oder Brücken zu überqueren, deren \
Zustand unklar ist. Wer Hilfe benötigt, kann sich rund um die Uhr an das Bürgertelefon \
der Stadt wenden. Freiwillige, die beim Aufräumen helfen möchten, werden gebeten, sich im \
Rathaus zu melden und festes Schuhwerk mitzubringen.

Auch die Landwirte der Region blicken mit Sorge auf ihre Felder: Große Teile der \
Gerstenernte stehen unter Wasser, und die Schäden lassen sich noch nicht abschätzen.
""",
        ),
    },
    "Spanish": {
        "short": (
            "¿Podrías decirme a qué hora sale el último tren hacia Málaga?",
            "La señora García compró limones, azúcar y un poco de canela en el mercado.",
        ),
        "long": (
            """\
Tortilla de patatas de mi abuela

Ingredientes: seis huevos, cuatro patatas medianas, una cebolla, aceite de oliva y sal.

Primero, pela las patatas y córtalas en láminas finas. Pica la cebolla en trocitos. \
Calienta abundante aceite en una sartén honda y, cuando esté caliente pero no humeante, \
añade las patatas y la cebolla. Fríelas a fuego medio unos veinte minutos, removiendo \
de vez en cuando para que no se peguen ni se doren demasiado: tienen que quedar tiernas.

Mientras tanto, bate los huevos en un cuenco grande con una pizca de sal. Escurre bien \
las patatas, mézclalas con el huevo batido y deja reposar la mezcla unos diez minutos. \
Este paso es el secreto: así la patata absorbe el huevo y la tortilla queda jugosa.

Pon una cucharada de aceite en la sartén, vierte la mezcla y cuájala a fuego bajo. \
Cuando los bordes estén firmes, dale la vuelta con ayuda de un plato. ¡Cuidado con no \
quemarte! Deja que se haga un par de minutos más y sírvela templada, con pan y ensalada.
""",
        ),
    },
    "Portuguese": {
        "short": (
            "Não se esqueça de levar o guarda-chuva, porque amanhã vai chover em São Paulo.",
            "A reunião da associação de moradores foi adiada para a próxima terça-feira.",
        ),
        "long": (
            """\
A Câmara Municipal de Lisboa anunciou ontem um plano para renovar os elétricos mais \
antigos da cidade, alguns dos quais circulam há mais de oitenta anos. Segundo o vereador \
responsável pela mobilidade, as obras começarão no próximo outono e deverão durar cerca \
de dois anos. Durante esse período, algumas linhas serão substituídas por autocarros.

A decisão foi recebida com opiniões divididas. Os comerciantes da Baixa temem que a \
redução do número de turistas prejudique as vendas, enquanto as associações de moradores \
consideram a medida necessária para garantir a segurança dos passageiros. «Não podemos \
continuar a remendar veículos que já deviam estar num museu», afirmou uma porta-voz.

O investimento previsto ultrapassa os quarenta milhões de euros, financiados em parte \
por fundos europeus. A autarquia garante que o aspeto tradicional dos elétricos será \
preservado, mas que os motores, os travões e a iluminação serão modernizados. Os \
primeiros veículos renovados deverão voltar às ruas da Graça e de Alfama em março.
""",
        ),
    },
    "Polish": {
        "short": (
            "Czy mógłbyś kupić chleb i masło w sklepie obok poczty, zanim go zamkną?",
            "Wczoraj wieczorem oglądaliśmy mecz, a później poszliśmy na pierogi z grzybami.",
        ),
        "long": (
            """\
Droga Zosiu,

dziękuję Ci serdecznie za list i zdjęcia z wakacji. Widać, że pogoda nad morzem \
dopisała, a dzieci bawiły się świetnie. U nas w Krakowie jesień przyszła wcześnie: od \
tygodnia pada deszcz, liście na Plantach zrobiły się żółte i czerwone, a rano jest już \
naprawdę zimno.

W pracy mam teraz dużo zajęć, bo przygotowujemy wystawę o historii miasta. Codziennie \
przeglądam stare fotografie i dokumenty, niektóre mają ponad sto lat. To żmudne zajęcie, \
ale bardzo ciekawe. Wieczorami uczę się hiszpańskiego, bo w przyszłym roku chcemy z \
Michałem pojechać do Sewilli.

Mama czuje się już lepiej po operacji i znów chodzi na spacery z psem. Pyta, czy \
przyjedziecie do nas na święta. Bardzo byśmy się ucieszyli! Możemy upiec razem makowiec \
i ulepić uszka do barszczu, tak jak robiła babcia.

Ściskam Cię mocno i pozdrawiam całą rodzinę,
Agnieszka
""",
        ),
    },
    "Czech": {
        "short": (
            "Příští týden pojedeme vlakem do Brna navštívit babičku a dědečka.",
            "Večer jsme si uvařili česnečku a poslechli si zprávy v rádiu.",
        ),
        "long": (
            """\
Praha – Silný vítr, který v noci na středu zasáhl většinu území Česka, poškodil desítky \
střech a vyvrátil stovky stromů. Hasiči vyjížděli od půlnoci k více než osmi stům \
zásahům, nejvíce na Vysočině a v Jihočeském kraji. Bez elektřiny zůstalo podle \
distributora přibližně čtyřicet tisíc domácností, opravy by měly být dokončeny do \
čtvrtečního večera.

Komplikace nastaly i v dopravě. Na několika železničních tratích spadly stromy do \
trolejového vedení a vlaky musely být nahrazeny autobusy. Řidiči by podle policie měli \
počítat se zdržením a na silnicích vyšších poloh také s náledím. Meteorologové varují, \
že nárazy větru mohou na horách dosáhnout až sto dvaceti kilometrů za hodinu.

Starosta Jihlavy vyzval obyvatele, aby nechodili do lesů a parků, dokud nebudou \
zkontrolovány všechny stromy. Školy ve městě zůstanou otevřené, ale některé kroužky a \
venkovní akce byly zrušeny. Počasí se má podle předpovědi uklidnit v pátek.
""",
        ),
    },
    "Hungarian": {
        "short": (
            "Holnap reggel a nagymamámhoz utazom Debrecenbe, és csak vasárnap jövök haza.",
            "A szomszéd kertjében már virágzik az őszibarack és a cseresznyefa.",
        ),
        "long": (
            """\
Gulyásleves

Hozzávalók négy személyre: fél kiló marhalábszár, két fej vöröshagyma, két evőkanál \
zsír, egy evőkanál édes fűszerpaprika, három közepes burgonya, két sárgarépa, egy \
petrezselyemgyökér, egy paradicsom, egy zöldpaprika, kömény, só és bors.

A húst kockázzuk fel, a hagymát vágjuk apróra. Egy nagy lábasban hevítsük fel a zsírt, \
és dinszteljük üvegesre rajta a hagymát. Húzzuk le a tűzről, szórjuk meg a \
pirospaprikával, majd gyorsan keverjük bele a húst, hogy a paprika ne égjen meg. \
Sózzuk, borsozzuk, adjunk hozzá egy csipet köményt, és kevés vízzel fedő alatt pároljuk \
körülbelül egy órán át.

Közben tisztítsuk meg a zöldségeket, és vágjuk őket kockákra. Amikor a hús már majdnem \
puha, öntsük fel másfél liter vízzel, tegyük bele a zöldségeket, a paradicsomot és a \
felszeletelt zöldpaprikát. Főzzük tovább, amíg minden megpuhul. Friss kenyérrel, forrón \
tálaljuk; aki szereti, csípős paprikát is tehet bele.
""",
        ),
    },
    "Russian": {
        "short": (
            "Завтра утром мы поедем на дачу к родителям, если не будет дождя.",
            "Бабушка испекла пирожки с капустой и позвала всех соседей на чай.",
        ),
        "long": (
            # ASCII quotes and hyphens, as in KOI8-R texts (KOI8-R has no « » or dashes).
            """\
В субботу в Нижнем Новгороде открылась ежегодная книжная ярмарка, которая в этом году \
собрала более двухсот издательств со всей страны. Посетители могут не только купить \
новинки, но и встретиться с авторами, послушать лекции и принять участие в \
мастер-классах для детей.

По словам организаторов, в первый же день ярмарку посетили около пятнадцати тысяч \
человек. Особой популярностью пользовались стенды с детской литературой и переводными \
романами. "Люди по-прежнему любят бумажные книги, особенно те, которые можно подарить", - \
рассказала одна из продавщиц.

Программа ярмарки рассчитана на неделю. В среду пройдёт встреча с молодыми поэтами, а в \
пятницу жюри объявит победителей конкурса на лучшую книгу года. Вход для школьников и \
пенсионеров бесплатный. Организаторы советуют приходить в будние дни, когда в залах \
меньше народу, и заранее проверять расписание выступлений на сайте ярмарки.
""",
        ),
    },
    "Ukrainian": {
        "short": (
            "Вибачте, підкажіть, будь ласка, як дійти до залізничного вокзалу?",
            "Цього літа ми їздили до Львова і їли найсмачніші вареники з вишнями.",
        ),
        "long": (
            """\
Дорога Олено!

Дякую тобі за теплого листа і за фотографії з Карпат. Які ж там гарні гори! Я давно \
мрію поїхати туди восени, коли ліси стають жовтими й червоними, а в селах готують \
бринзу й печуть хліб у печі.

У нас у Києві все гаразд. Діти пішли до школи: Андрійко цього року вже в п'ятому класі, \
а маленька Ірина ще тільки вчиться читати. Вечорами ми разом гуляємо в парку біля \
Дніпра, годуємо качок і рахуємо кораблі на річці. Чоловік багато працює, але на \
вихідних завжди знаходить час, щоб поїхати з нами на дачу до бабусі.

Минулого тижня я нарешті спекла твій пиріг з яблуками за рецептом, який ти мені дала. \
Вийшло дуже смачно, хоча тісто трохи підгоріло знизу. Наступного разу буду уважнішою.

Пиши частіше і передавай вітання всій родині. Обіймаю тебе міцно,
твоя Галина
""",
        ),
    },
    "Bulgarian": {
        "short": (
            "Утре сутринта ще отидем на пазара да купим домати, краставици и сирене.",
            "Влакът за Варна закъснява с около половин час заради ремонт на линията.",
        ),
        "long": (
            """\
Баница със сирене

Продукти: един пакет кори за баница, четири яйца, четиристотин грама сирене, една \
кофичка кисело мляко, половин чаена лъжичка сода бикарбонат и около сто грама масло.

Натрошете сиренето в голяма купа. Добавете яйцата и разбъркайте добре. Содата \
разтворете в киселото мляко и изчакайте да шупне, след което я прибавете към сиренето. \
Разтопете маслото на слаб огън.

Намажете тавата с малко масло. Поставете една кора, поръсете я с мазнина и сложете от \
плънката. Повтаряйте, докато свършат корите, като последната остане отгоре. Можете и да \
навиете корите на рула и да ги подредите в тавата като охлюв – така баницата става още \
по-хрупкава.

Печете в предварително загрята фурна на сто и осемдесет градуса около четиридесет \
минути, докато повърхността стане златиста. Оставете баницата да почине десетина \
минути, преди да я нарежете. Поднесете я топла, с айрян или с чаша боза.
""",
        ),
    },
    "Greek": {
        "short": (
            "Αύριο το πρωί θα πάμε με το πλοίο στην Αίγινα για μπάνιο και φαγητό.",
            "Η γιαγιά μου φτιάχνει την καλύτερη σπανακόπιτα σε όλη τη γειτονιά.",
            "Άνοιξε το παράθυρο, γιατί έχει πολλή ζέστη σήμερα στο γραφείο.",
        ),
        "long": (
            """\
Αθήνα. Με επιτυχία ολοκληρώθηκε το Σαββατοκύριακο ο τριήμερος μαραθώνιος εθελοντικού \
καθαρισμού των ακτών της Αττικής. Περισσότεροι από δύο χιλιάδες πολίτες, ανάμεσά τους \
πολλοί μαθητές και φοιτητές, συγκέντρωσαν σχεδόν δέκα τόνους απορριμμάτων από παραλίες \
του Σαρωνικού και της Ανατολικής Αττικής.

Τα περισσότερα απορρίμματα ήταν πλαστικά μπουκάλια, καπάκια και αποτσίγαρα, ενώ \
βρέθηκαν επίσης παλιά δίχτυα ψαρέματος και ένα σκουριασμένο ποδήλατο. Άλλοι εθελοντές \
καθάρισαν τις όχθες ενός ρέματος στην Άνω Γλυφάδα. Οι διοργανωτές τόνισαν ότι η \
συμμετοχή ήταν η μεγαλύτερη των τελευταίων ετών.

«Η θάλασσα είναι κοινό μας αγαθό και πρέπει να τη φροντίζουμε όλοι», δήλωσε μια από τις \
εθελόντριες. Η επόμενη δράση έχει προγραμματιστεί για τον Οκτώβριο στην Εύβοια, και όσοι \
επιθυμούν να συμμετάσχουν μπορούν να δηλώσουν συμμετοχή στην ιστοσελίδα της οργάνωσης.
""",
        ),
    },
    "Turkish": {
        "short": (
            "Yarın sabah erkenden İstanbul'a gideceğiz, bu yüzden bavulları şimdi hazırlıyoruz.",
            "Annem bahçedeki ağaçlardan topladığı erikleri komşulara dağıttı.",
        ),
        "long": (
            """\
Sevgili Ayşe,

Mektubun dün elime ulaştı, çok sevindim. Ankara'daki yeni işinin iyi gittiğini duymak \
beni mutlu etti. Biz de İzmir'de her şey yolunda. Havalar ısınmaya başladı; akşamları \
Kordon'da yürüyüş yapıyor, deniz kenarında çay içiyoruz.

Geçen hafta babamın doğum günüydü. Bütün aile toplandık, annem en sevdiği yemekleri \
hazırladı: zeytinyağlı yaprak sarması, mercimek çorbası ve fırında tavuk. Tatlı olarak \
da kendi yaptığı güllacı getirdi. Çocuklar bahçede top oynadı, büyükler ise gece \
yarısına kadar eski günleri konuştu.

Önümüzdeki ay birkaç günlüğüne İstanbul'a gitmeyi düşünüyorum. Eğer sen de gelebilirsen, \
birlikte Kadıköy'de dolaşır, vapurla Adalar'a gideriz. Ne dersin? Bana en kısa zamanda \
haber ver.

Herkese selamlar, gözlerinden öperim.
Zeynep
""",
        ),
    },
    "Japanese": {
        "short": (
            "明日の朝九時に、駅前の喫茶店で待ち合わせをしましょう。遅れないでくださいね。",
            "今年の夏は京都の祖母の家に行って、川で魚を釣ったり花火を見たりしました。",
        ),
        "long": (
            """\
東京都は十日、来月から都内の公園で新しいごみの分別ルールを導入すると発表した。\
これまで「燃えるごみ」としてまとめて回収していたプラスチック容器を、別の袋に分けて\
出すよう利用者に求める。都によると、公園で回収されるごみの約三割がペットボトルや\
弁当の容器で、リサイクルの割合を高めることが目的だという。

新しいルールに合わせて、主な公園には色分けされたごみ箱が設置される。入り口には\
日本語と英語、中国語、韓国語で書かれた案内板も置かれる予定だ。担当者は「観光客の\
方にも分かりやすいように工夫した。ご協力をお願いしたい」と話している。

一方、公園の近くに住む人からは「ごみ箱が増えるとカラスが集まるのではないか」と\
心配する声も上がっている。都は、ごみ箱にふたを付けるほか、職員が一日に二回見回りを\
して対策をとるとしている。また、夏休みの期間中は回収の回数を増やし、週末には\
ボランティアの学生が分別の方法を説明するという。
""",
        ),
    },
    "Korean": {
        "short": (
            "내일 아침에 시장에 가서 사과와 배추를 좀 사 올 테니까 집에서 기다려 주세요.",
            "지난 주말에 친구들과 함께 부산 바닷가에서 맛있는 회를 먹었습니다.",
        ),
        "long": (
            """\
사랑하는 민지에게

잘 지내고 있니? 서울은 요즘 날씨가 많이 추워져서 아침마다 두꺼운 외투를 꺼내 입고 \
있어. 네가 보내 준 편지와 사진은 잘 받았어. 제주도의 바다가 정말 파랗고 예쁘더라. \
나도 언젠가 꼭 가 보고 싶어.

나는 지난달부터 새 회사에 다니기 시작했어. 처음에는 모든 것이 낯설고 어려웠지만, \
동료들이 친절하게 도와줘서 이제는 조금 익숙해졌어. 점심시간에는 회사 근처 작은 \
식당에서 김치찌개나 비빔밥을 자주 먹어. 주말에는 부모님 댁에 가서 어머니가 만들어 \
주시는 된장찌개를 먹으며 쉬고 있어.

다음 달에 설날이 되면 너도 서울에 올 수 있니? 오랜만에 같이 만나서 맛있는 것도 \
먹고 이야기도 많이 하고 싶다. 시간이 되면 꼭 연락해 줘. 부모님께도 안부 \
전해 드리고, 감기 조심해.

항상 건강하고 행복하길 바랄게.
너의 친구 수진이가
""",
        ),
    },
    "Simplified Chinese": {
        "short": (
            "明天上午我们一起去图书馆看书，中午在附近吃饭，下午再去公园散步吧。",
            "妈妈今天做了红烧肉和西红柿炒鸡蛋，全家人围坐在一起，都吃得很开心。",
        ),
        "long": (
            """\
本报讯 近日，市政府发布了关于改善城市公共交通的实施方案。根据方案，今年年底前将\
新开通十二条公交线路，并对部分老旧车辆进行更新，全面推广使用新能源公交车。同时，\
地铁三号线的延长工程也将于下个月正式开工，预计两年后建成通车。

市交通局负责人表示，近年来随着城市人口不断增加，早晚高峰时段的拥堵问题日益突出。\
新方案的目标是让市民出行更加方便、快捷、绿色。届时，市区主要道路的公交车平均等候\
时间将缩短到五分钟以内。此外，政府还计划在学校、医院和大型商场附近增设公共自行车\
停放点，鼓励市民短途出行时骑车或步行。

不少市民对此表示欢迎。一位在公司上班的王女士说：“以前每天早上坐公交车要等很久，\
如果以后车次增加，上班就不用那么早出门了。”也有市民建议，有关部门应该加强对公交\
司机的培训，提高服务质量，让乘客感到更加安全和舒适。
""",
        ),
    },
    "Traditional Chinese": {
        "short": (
            "不好意思，請問到火車站應該怎麼走？我好像在這附近迷路了，謝謝您。",
            "聽說這家老餐廳的牛肉麵非常好吃，每到週末門口總是排著很長的隊伍。",
        ),
        "long": (
            """\
親愛的小華：

好久不見，最近過得好嗎？上次收到你的來信，已經是兩個月前的事了。這段時間我一直忙著\
準備畢業論文，每天都在圖書館待到很晚，所以沒有時間回信，真是對不起。

臺北這幾天下了很多雨，天氣又濕又冷，出門一定要帶傘。不過週末的時候，我還是和幾個\
同學一起去了陽明山。山上的櫻花已經開了，粉紅色的花瓣落在小路上，非常漂亮。我們在\
山上的溫泉旅館泡了溫泉，晚上又到夜市吃了臭豆腐和珍珠奶茶，大家都玩得很開心。

聽說你下個月要回國了，我們全家都很期待見到你。媽媽說一定要請你來家裡吃飯，她會做\
你最喜歡的紅燒魚和滷肉飯。如果你有時間，我們也可以一起去看看高中的老師，他常常問起\
你的消息，還說很想念你們那一屆的學生。天氣越來越冷了，你在外面要多穿一點衣服，\
按時吃飯，不要太累。

祝你
身體健康，萬事如意

你的朋友 志明 敬上
""",
        ),
    },
    "English": {
        "short": (
            "Please water the plants on the balcony while we are away.",
            "The meeting moved to Thursday because the projector broke.",
        ),
        "long": (
            """\
Dear Mr. Thompson,

Thank you for your letter of 3 March and for the detailed report on the condition of \
the house. We have read it carefully and would like to go ahead with the repairs you \
recommend, starting with the roof and the gutters before the autumn rains arrive.

As discussed on the phone, we would prefer the work to be done in two stages. The first \
would cover the roof, the chimney and the drainage at the back of the garden; the second, \
which can wait until spring, would include the new windows on the ground floor. Could \
you please send us a revised estimate that separates the costs of each stage?

We will be away from the 14th to the 28th of next month, but our neighbour, Mrs. Patel, \
has a spare key and is happy to let your workers in.

With kind regards,
Anne and David Miller
""",
        ),
    },
}


@dataclass(frozen=True)
class Sample:
    language: str
    encoding: str
    length: str
    """``"short"`` (one sentence) or ``"long"`` (a letter, a news item, a recipe)."""
    text: str

    @property
    def data(self) -> bytes:
        return self.text.encode(self.encoding)


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


SAMPLES = [
    Sample(language, encoding, length, text)
    for language, encodings in ENCODINGS_BY_LANGUAGE.items()
    for encoding in encodings
    for length, texts in TEXTS[language].items()
    for text in texts
    if _encodes(text, encoding)
]


def labelled_bytes(samples: Iterable[Sample] = SAMPLES) -> Iterator[tuple[bytes, str]]:
    """(encoded bytes, the text they must decode to) for each sample."""
    for sample in samples:
        yield sample.data, sample.text
