"""The small user-like corpora's made-up documents and questions (issue 25), as data: what
``bench/build_small_corpora.py`` writes. Every fact is invented; an unanswerable question asks what no document of
its corpus says, though it sounds as if one might (the case where a similarity threshold alone answers wrongly).

A document is ``(file name, title, sections)``; a section is ``(heading, paragraph)``. A question is ``(id suffix,
question, gold answers, reference files)``: no gold answers means the corpus does not hold the answer (abstain).
"""

from __future__ import annotations

Section = tuple[str, str]
Doc = tuple[str, str, tuple[Section, ...]]
Question = tuple[str, str, tuple[str, ...], tuple[str, ...]]

# fmt: off
VANTREL: tuple[Doc, ...] = (
    ("about.md", "About Vantrel Glassworks", (
        ("Our story", "Vantrel Glassworks was founded in 1994 by Mirela Vantrel in the harbour town of Oskbridge. "
         "She had trained as a glassblower in Murano before opening the studio in a former rope store."),
        ("The hot shop", "The main furnace is nicknamed Big Ada. It holds 180 kilograms of molten glass and runs at "
         "1,150 degrees Celsius day and night. Big Ada was rebuilt with new refractory bricks in 2019."),
        ("What we make", "The studio makes hand-blown lamps, bowls and drinking glasses in small batches. Each piece "
         "is signed with a small engraved V on its base."),
    )),
    ("classes.html", "Glassblowing classes", (
        ("Beginner weekend", "The beginner weekend course costs 240 euros and takes at most six students. It runs on "
         "Saturdays and Sundays from 10:00 to 16:00, and every student blows a paperweight and a small bowl."),
        ("Gift vouchers", "Gift vouchers for any course can be bought in the shop and are valid for one year."),
    )),
    ("safety.pdf", "Hot shop safety rules", (
        ("Safety officer", "The studio's safety officer is Tomas Reinholt. Report every burn, cut or near miss to him "
         "on the same day."),
        ("Protection", "Everyone in the hot shop wears didymium glasses, which filter the sodium flare, and cotton "
         "clothing. Synthetic fabrics are not allowed near the furnace."),
        ("Cooling", "Finished pieces cool in the annealer for sixteen hours before anyone may handle them."),
    )),
    ("visiting.md", "Visiting the studio", (
        ("Opening hours", "The shop and the viewing gallery are open Tuesday to Saturday, 10:00 to 17:00. Visitors "
         "can watch the glassblowers at work from the gallery."),
        ("Getting here", "The studio is at 7 Quay Lane. There is free parking behind the old rope store."),
    )),
)
VANTREL_QUESTIONS: tuple[Question, ...] = (
    ("founder", "Who founded Vantrel Glassworks, and when?", ("Mirela Vantrel", "1994"), ("about.md",)),
    ("furnace", "What is the main furnace nicknamed?", ("Big Ada",), ("about.md",)),
    ("temperature", "At what temperature does the furnace run?", ("1,150 degrees",), ("about.md",)),
    ("safety", "Who is the safety officer at the studio?", ("Tomas Reinholt",), ("safety.pdf",)),
    ("course", "How much does the beginner weekend course cost?", ("240 euros",), ("classes.html",)),
    ("annealer", "How long do finished pieces cool in the annealer?", ("sixteen hours",), ("safety.pdf",)),
    ("glasses", "What kind of glasses must people wear in the hot shop?", ("didymium",), ("safety.pdf",)),
    ("address", "Where is the studio?", ("7 Quay Lane",), ("visiting.md",)),
    ("employees", "How many employees does Vantrel Glassworks have?", (), ()),
    ("revenue", "What was the studio's revenue last year?", (), ()),
    ("shipping", "Does Vantrel Glassworks ship orders to Japan?", (), ()),
    ("logo", "Who designed the Vantrel Glassworks logo?", (), ()),
)

BAKERY: tuple[Doc, ...] = (
    ("story.md", "Our bakery", (
        ("How it started", "Halden Street Bakery was opened in 2009 by Ines Calloway and her brother Marco. The "
         "first oven came from a closed pizzeria across the river."),
        ("The starter", "All our sourdough is raised with a starter called Gus, which Ines's grandmother began "
         "more than thirty years ago. Gus is fed twice a day with rye flour."),
    )),
    ("menu.html", "Menu and prices", (
        ("Bread", "A rye loaf costs 5.40 and a white sourdough loaf costs 4.80. Bread is baked every morning from "
         "4:00."),
        ("Pastries", "Cardamom buns are baked on Fridays only. Almond croissants are sold every day until they run "
         "out."),
        ("Special diets", "We do not bake gluten-free bread: our kitchen is full of flour."),
    )),
    ("allergens.pdf", "Allergen policy", (
        ("Nuts", "Nuts are handled in the same kitchen as every product, so any item may contain traces of nuts."),
        ("Who to ask", "Questions about allergens go to Priya Anand, our allergen contact, who keeps the recipe "
         "sheets for every product."),
    )),
)
BAKERY_QUESTIONS: tuple[Question, ...] = (
    ("founded", "When was Halden Street Bakery opened, and by whom?", ("2009", "Ines Calloway"), ("story.md",)),
    ("starter", "What is the sourdough starter called?", ("Gus",), ("story.md",)),
    ("rye", "How much does a rye loaf cost?", ("5.40",), ("menu.html",)),
    ("cardamom", "On which day are cardamom buns baked?", ("Fridays",), ("menu.html",)),
    ("allergen", "Who is the bakery's allergen contact?", ("Priya Anand",), ("allergens.pdf",)),
    ("feeding", "What flour is the starter fed with?", ("rye flour",), ("story.md",)),
    ("loaves", "How many loaves does the bakery bake each day?", (), ()),
    ("delivery", "Does the bakery deliver to offices?", (), ()),
    ("wedding", "How much does a wedding cake cost?", (), ()),
    ("supplier", "Which mill supplies the bakery's flour?", (), ()),
)

CYCLING: tuple[Doc, ...] = (
    ("club.md", "Greywater Cycling Club", (
        ("The club", "Greywater Cycling Club was founded in 1978 by railway workers. The club's chairperson is "
         "Dana Okafor."),
        ("Membership", "Membership costs 45 pounds a year and includes insurance for club rides."),
        ("Sunday ride", "The Sunday ride leaves at 8:30 from the clock tower in Market Square, whatever the "
         "weather."),
    )),
    ("routes.html", "Club routes", (
        ("Reservoir Loop", "The Reservoir Loop is 62 kilometres long and mostly flat. The café stop is at Fenwick "
         "Mill."),
        ("Mallow Climb", "The Mallow Climb is the hardest hill on our routes, with a gradient of nine percent for "
         "two kilometres."),
    )),
    ("rules.md", "Ride rules", (
        ("Safety", "Helmets are mandatory on every club ride. A group has at most twelve riders; larger groups "
         "split in two."),
        ("Ride leaders", "Every ride leader carries a pump, two spare inner tubes and a first aid kit."),
    )),
)
CYCLING_QUESTIONS: tuple[Question, ...] = (
    ("founded", "When was the Greywater Cycling Club founded?", ("1978",), ("club.md",)),
    ("chair", "Who is the chairperson of the club?", ("Dana Okafor",), ("club.md",)),
    ("fee", "How much is the yearly membership?", ("45 pounds",), ("club.md",)),
    ("sunday", "Where does the Sunday ride start?", ("clock tower",), ("club.md",)),
    ("loop", "How long is the Reservoir Loop?", ("62 kilometres",), ("routes.html",)),
    ("group", "How many riders can a group have?", ("twelve",), ("rules.md",)),
    ("members", "How many members does the club have?", (), ()),
    ("jersey", "What colour is the club jersey?", (), ()),
    ("champion", "Who won the club hill climb in 2023?", (), ()),
    ("ebikes", "Are electric bikes allowed on club rides?", (), ()),
)

HANDBOOK: tuple[Doc, ...] = (
    ("onboarding.md", "Team Lumen onboarding", (
        ("First week", "New engineers get their laptop through an IT ticket filed by their manager. Every newcomer "
         "has a mentor for the first four weeks."),
        ("Code review", "Every change needs two approvals before it is merged, and the author merges it."),
    )),
    ("oncall.html", "On-call", (
        ("Rotation", "On-call rotates weekly; the handover is on Monday at 10:00."),
        ("Escalation", "An alert that nobody acknowledges within 15 minutes is escalated to the engineering "
         "manager, Ravi Sandoval."),
    )),
    ("release.pdf", "Release process", (
        ("Release train", "A release train leaves every second Wednesday. Code freeze starts 48 hours before the "
         "release."),
        ("Rollbacks", "Only the release captain may roll a release back, and the rollback is announced in the "
         "#lumen-releases channel."),
    )),
)
HANDBOOK_QUESTIONS: tuple[Question, ...] = (
    ("mentor", "How long does a newcomer have a mentor?", ("four weeks",), ("onboarding.md",)),
    ("approvals", "How many approvals does a change need before it is merged?", ("two approvals",),
     ("onboarding.md",)),
    ("handover", "When is the on-call handover?", ("Monday at 10:00",), ("oncall.html",)),
    ("escalation", "Who is an unacknowledged alert escalated to?", ("Ravi Sandoval",), ("oncall.html",)),
    ("freeze", "How long before the release does the code freeze start?", ("48 hours",), ("release.pdf",)),
    ("rollback", "Who may roll a release back?", ("release captain",), ("release.pdf",)),
    ("budget", "What is Team Lumen's yearly budget?", (), ()),
    ("size", "How many engineers are on Team Lumen?", (), ()),
    ("cloud", "Which cloud provider does the team deploy to?", (), ()),
    ("holidays", "How many days of holiday do engineers get?", (), ()),
)

MUSEUM: tuple[Doc, ...] = (
    ("about.md", "Marlow Lane Clock Museum", (
        ("History", "The Marlow Lane Clock Museum opened in 1962 in a former tannery. Its collection holds 340 "
         "clocks."),
        ("Highlights", "The oldest clock in the collection is a brass lantern clock made in 1690. The tallest is a "
         "longcase clock of 2.6 metres."),
    )),
    ("visit.html", "Plan your visit", (
        ("Tickets", "An adult ticket costs 8 euros; children under 12 enter free."),
        ("Tours", "A guided tour starts every Sunday at 14:00 at the front desk."),
    )),
    ("conservation.pdf", "Conservation", (
        ("Conservator", "The museum's conservator is Helga Brandt. She keeps the galleries between 45 and 55 "
         "percent relative humidity."),
        ("Winding", "The running clocks are wound every Thursday before the museum opens."),
    )),
)
MUSEUM_QUESTIONS: tuple[Question, ...] = (
    ("opened", "When did the clock museum open?", ("1962",), ("about.md",)),
    ("count", "How many clocks does the collection hold?", ("340",), ("about.md",)),
    ("oldest", "What is the oldest clock in the collection?", ("lantern clock",), ("about.md",)),
    ("ticket", "How much is an adult ticket?", ("8 euros",), ("visit.html",)),
    ("conservator", "Who is the museum's conservator?", ("Helga Brandt",), ("conservation.pdf",)),
    ("winding", "On which day are the clocks wound?", ("Thursday",), ("conservation.pdf",)),
    ("director", "Who is the director of the museum?", (), ()),
    ("visitors", "How many visitors does the museum get a year?", (), ()),
    ("cafe", "Does the museum have a café?", (), ()),
    ("donate", "How can I donate a clock to the museum?", (), ()),
)

GARDEN: tuple[Doc, ...] = (
    ("about.md", "Pell Road Community Garden", (
        ("How it began", "Pell Road Community Garden started in 2015 on a former car park. It now has 38 plots "
         "and a waiting list."),
        ("Work days", "Members meet for a shared work day on the first Saturday of every month."),
    )),
    ("rules.html", "Garden rules", (
        ("Fees", "A plot costs 25 pounds a year, paid each March."),
        ("Water", "Hosepipes are not allowed in July and August; members use watering cans from the rain "
         "tanks."),
        ("Compost", "Green waste goes in the three compost bays by the shed; no cooked food."),
    )),
)
GARDEN_QUESTIONS: tuple[Question, ...] = (
    ("started", "When did the community garden start?", ("2015",), ("about.md",)),
    ("plots", "How many plots does the garden have?", ("38",), ("about.md",)),
    ("fee", "How much does a plot cost?", ("25 pounds",), ("rules.html",)),
    ("workday", "When is the shared work day?", ("first Saturday",), ("about.md",)),
    ("hosepipe", "When are hosepipes not allowed?", ("July and August",), ("rules.html",)),
    ("treasurer", "Who is the garden's treasurer?", (), ()),
    ("plotsize", "How big is each plot?", (), ()),
    ("tomatoes", "Which tomato varieties grow best in the garden?", (), ()),
)

# (name, documents, questions); the first three are tuned on, the others held out.
Corpus = tuple[str, tuple[Doc, ...], tuple[Question, ...]]
TUNING: tuple[Corpus, ...] = (("vantrel", VANTREL, VANTREL_QUESTIONS), ("bakery", BAKERY, BAKERY_QUESTIONS),
                              ("cycling", CYCLING, CYCLING_QUESTIONS))
HELD_OUT: tuple[Corpus, ...] = (("handbook", HANDBOOK, HANDBOOK_QUESTIONS), ("museum", MUSEUM, MUSEUM_QUESTIONS),
                                ("garden", GARDEN, GARDEN_QUESTIONS))
# fmt: on
