"""The memory search evaluation set (issue 18): what an agent remembers for one person, their household and the
swarm, with a question for each fact asked the way that person would ask it later.

Written by hand for this project, in one sitting: an invented household (the user, their partner Alex, sister
Clara, brother Tom, the dog Biscuit) and the swarm's agents (Echo, Seer, Forge, Quill, Helm, Mace). Each question
rephrases its fact with other words (synonyms, what a thing is for instead of what it is called), so it shares few
content words with it; names are kept where a person would use them. Each is answerable from its fact alone: it
says "Alex" where the fact does, not "my partner", which only another fact would resolve. Facts come in deliberate near
neighbours (several birthdays, two laptops, two phones, three kinds of backup, three renewals, two passports, two
flu jabs, two dentist visits, two holiday plans) so the right one must outrank a merely topical one.

UNANSWERABLE holds questions whose answer is not stored: a few topical near misses (the sister's phone number when
only the brother's is stored), then questions nothing in memory is about, some sharing a word with it ("who
discovered penicillin?", "when did the Berlin Wall fall?"). More near misses are in NEAR_MISSES, apart: see there
why. Nothing here is a real person, account or secret.
"""

FACTS: list[tuple[str, str]] = [
    # Preferences
    ("I drink my coffee black, no sugar, and only before noon.", "how do I take my morning brew?"),
    ("Prefers tea with oat milk in the afternoon.", "what goes into the after-lunch cuppa?"),
    ("The user is vegetarian but eats fish about once a week.", "does the user avoid meat?"),
    (
        "Favourite cuisine is Ethiopian; the go-to restaurant is Abyssinia on Mill Road.",
        "where should we book dinner if I get to pick the food?",
    ),
    ("Dislikes coriander: it tastes like soap to them.", "which herb should be left out of recipes?"),
    ("Wants all replies in British English and never any emoji.", "what spelling conventions should messages follow?"),
    (
        "Prefers dark mode in every app and a large font in the terminal.",
        "what colour scheme does the user like on screens?",
    ),
    ("Likes to run at about 6am along the river path.", "when and where does the user go jogging?"),
    ("Listens to jazz while working; Bill Evans is a favourite.", "what music helps with focus?"),
    ("Prefers window seats on flights and never checks a bag.", "where to sit when booking a plane?"),
    ("Reads on a Kobo e-reader, not a Kindle.", "what gadget is used for ebooks?"),
    ("Hates phone calls before 10 in the morning; send a text instead.", "is it ok to ring me early?"),
    ("Meetings should be 25 minutes long, never a full hour.", "how long should calls on the calendar be?"),
    ("Does not want notifications after 9pm except from family.", "when should alerts be silenced?"),
    ("Favourite author is Ursula K. Le Guin.", "whose novels do I love most?"),
    (
        "Invoices and receipts get filed in the Finance/2026 folder on the NAS.",
        "where do bills go once they are saved?",
    ),
    # People
    ("My sister Clara's birthday is on 14 March.", "when does Clara turn a year older?"),
    ("My brother Tom's birthday is 2 September.", "when should I send Tom a card?"),
    ("Tom's phone number is +44 7700 900123.", "how can I reach Tom by mobile?"),
    ("Clara lives in Lisbon with her partner Rui.", "which city is Clara based in?"),
    ("Clara's partner Rui is a marine biologist.", "what is Clara's boyfriend's job?"),
    ("Tom works as an electrician in Leeds.", "what's Tom's trade?"),
    ("Tom is married to Aisha; they have twin boys, Leo and Sami.", "how many children does Tom have?"),
    ("Leo and Sami's birthday is 8 July.", "when do the twins celebrate?"),
    ("Clara's daughter Maya turns seven in May and is obsessed with dinosaurs.", "what would Maya like as a present?"),
    ("Mum's name is Helen; she lives in York and gardens obsessively.", "where does my mother live?"),
    ("Mum's birthday is 3 January.", "when is my mother's special day each year?"),
    ("Mum's house is a ten-minute walk from York Minster.", "how close is my mother's place to the cathedral?"),
    ("Dad, Peter, had knee surgery in October and is recovering slowly.", "what operation did my father have?"),
    ("My partner Alex works as a nurse on night shifts at St Mary's.", "what does Alex do for a living?"),
    ("Alex is allergic to cats.", "why can't we adopt a kitten?"),
    ("Alex's birthday is 17 October.", "on which date was Alex born?"),
    ("Alex prefers flowers over chocolates, especially ranunculus.", "what gift makes Alex happy?"),
    ("Our wedding anniversary is 21 June.", "what date did Alex and I get married?"),
    ("Priya from the design team is the go-to person for icon work.", "who should I ask for new glyphs?"),
    (
        "Marcus is the landlord; he prefers email and answers within a day.",
        "how do I contact the person who owns the flat?",
    ),
    ("Dr Okafor is the GP at Riverside Surgery.", "who is my family doctor?"),
    ("Dr Lind is the dentist; the next check-up is due in April.", "when am I supposed to get my teeth looked at?"),
    ("Alex's dentist appointment is on 5 February at 8:30.", "when is Alex's teeth check?"),
    ("Best friend Jonas lives in Berlin and visits every December.", "when does Jonas come over?"),
    ("Jonas's birthday is 30 November.", "what day should I congratulate Jonas?"),
    ("Neighbour Ruth at number 12 keeps a spare house key.", "who can let someone in if I'm locked out?"),
    (
        "The accountant is Farid Haddad; the tax return goes to him by the end of December.",
        "who does my taxes?",
    ),
    ("Sofia is the manager at work; one-to-ones are every other Thursday.", "who's my boss?"),
    # Devices
    (
        "The home server is an Intel NUC in the hallway cupboard running Debian 12.",
        "what machine hosts our self-hosted services?",
    ),
    ("The work laptop is a ThinkPad X1 Carbon Gen 11 with 32 GB of RAM.", "what computer does my employer provide?"),
    ("The personal laptop is a 2021 MacBook Air with an M1 chip.", "which notebook do I use for my own stuff?"),
    ("The router is a Fritz!Box 7590; its admin page is at 192.168.178.1.", "how do I get into the wifi box settings?"),
    ("Phone is a Pixel 8 running GrapheneOS.", "what mobile handset do I carry?"),
    ("Alex's phone is an iPhone 13 with a cracked screen.", "what handset does Alex use?"),
    ("The NAS is a Synology DS920+ with four 8 TB drives in SHR.", "how much storage is in the network disk box?"),
    (
        "The printer is a Brother laser on the upstairs landing; its toner is TN-2420.",
        "which cartridge should I reorder?",
    ),
    ("The Tado thermostat drops the heating to 17°C at 11pm.", "how cold does the house get overnight?"),
    ("The car is a 2018 Skoda Octavia estate.", "what do we drive?"),
    (
        "The e-bike battery takes four hours to charge fully.",
        "how long until the bicycle is ready after plugging it in?",
    ),
    ("The kitchen speaker is a Sonos One; the living room has a Sonos Arc.", "what plays music where we cook?"),
    ("A Raspberry Pi 4 in the garage runs Home Assistant.", "which board runs the home automation?"),
    (
        "The 3D printer is a Prusa MK4 and uses PETG for outdoor parts.",
        "which plastic should I print garden parts with?",
    ),
    ("The desk monitor is a Dell U2723QE connected by USB-C.", "what screen is on my desk?"),
    ("Noise-cancelling headphones are Sony WH-1000XM5, usually in the backpack.", "where are my over-ear cans?"),
    ("Earbuds are AirPods Pro from 2023; the left one crackles.", "which in-ear audio has a fault?"),
    (
        "The smartwatch is a Garmin Forerunner 265, charged every four days.",
        "how often does the wrist tracker need power?",
    ),
    ("The boiler is a Worcester Bosch combi installed in 2016.", "what make is the heating unit?"),
    (
        "The washing machine shows error E18 when its filter is blocked.",
        "what does that code on the laundry appliance mean?",
    ),
    (
        "Dishwasher tablets are Finish Quantum, bought in bulk from Costco.",
        "which detergent goes in the plate cleaner?",
    ),
    ("The spare car key is in the kitchen drawer under the tea towels.", "where is the second fob for the Skoda?"),
    (
        "The guest wifi is called Biscuit-Guest and is isolated from the NAS.",
        "what network should visitors connect to?",
    ),
    ("The wifi password is stored in Bitwarden under 'Home network'.", "where can I find the wireless login?"),
    (
        "The work VPN uses WireGuard; its config is on the ThinkPad only.",
        "how do I get onto the company network remotely?",
    ),
    # Plans
    (
        "Planning a trip to Japan in April 2027: Tokyo for five days, then Kyoto.",
        "where are we travelling next spring?",
    ),
    ("Planning a long weekend in Edinburgh for the Fringe in August.", "what's the summer festival getaway?"),
    (
        "Learning Portuguese before visiting Clara, with Duolingo 15 minutes a day.",
        "what language am I studying, and why?",
    ),
    ("Plans to repaint the spare bedroom sage green in January.", "what colour will the guest room be?"),
    (
        "Saving for a new kitchen: budget £12,000, target spring 2028.",
        "how much money is set aside to redo where we cook?",
    ),
    (
        "Training for the Cambridge half marathon in March, aiming for under 1:50.",
        "what time am I aiming for in the race?",
    ),
    (
        "Will switch energy supplier when the fixed tariff ends in February.",
        "when should I change who provides electricity and gas?",
    ),
    (
        "Considering replacing the Octavia with an electric car in 2027.",
        "are we thinking about going battery-powered for driving?",
    ),
    ("Plans to move the home server to a rack in the garage next year.", "will the home server keep its current spot?"),
    (
        "Wants to read 30 books this year; 18 done so far.",
        "how many novels have I got through against the annual goal?",
    ),
    ("Christmas this year is at our flat, for eight people.", "where is the December holiday happening?"),
    ("New Year's Eve will be spent with Jonas in Berlin.", "where will we be at midnight on 31 December?"),
    ("Thinking about a second dog in spring, probably a rescue greyhound.", "are we adopting another pet?"),
    # Schedules
    ("Weekly backups go to an encrypted USB drive every Sunday night.", "when do backups happen?"),
    (
        "General waste goes out on Tuesday evening; recycling on alternate Fridays.",
        "which night does the rubbish get collected?",
    ),
    ("Yoga class is Wednesday at 7pm at the community hall.", "when is the stretching session?"),
    ("Piano lesson every Saturday at 10am with Mrs Grant.", "when do I practise keys with my teacher?"),
    ("Team standup is at 9:30 every weekday on Zoom.", "what time is the daily morning check-in at work?"),
    ("Sprint planning happens every second Monday at 2pm.", "when do we plan the next fortnight of work?"),
    ("The cleaner comes on Thursday mornings; leave cash on the table.", "which day does someone else tidy the house?"),
    ("Pay day is the 25th of each month.", "when does the salary arrive?"),
    ("Rent of £1,450 is due on the 1st by standing order.", "how much do we pay for the flat and when?"),
    (
        "Alex's night shifts are Monday to Wednesday; sleeps until 2pm afterwards.",
        "when should I keep the house quiet during the day?",
    ),
    ("Biscuit gets walked at 7am and 6pm.", "what times does the pet go out?"),
    ("Biscuit's flea treatment is due on the first of every month.", "when does the dog need his parasite medicine?"),
    ("Biscuit is a three-year-old beagle who eats Lily's Kitchen.", "what breed is our pet?"),
    ("The car's MOT is due on 14 August.", "when does the Skoda need its annual test?"),
    ("Car insurance renews on 3 November with Admiral.", "when is the vehicle cover up for renewal?"),
    ("Home insurance renews on 19 May.", "when does the policy on the flat need renewing?"),
    ("My passport expires in October 2028.", "how long is my travel document valid?"),
    ("Alex's passport expires next March and must be renewed before Japan.", "does Alex need new travel papers?"),
    ("Helm scheduled the weekly review for Friday at 4pm.", "when do I look back over the week?"),
    (
        "Book club meets on the last Tuesday of the month at The Castle pub; this month's book is Piranesi.",
        "what's the title for the next literary meetup?",
    ),
    # Places
    ("We live on the second floor and there is no lift.", "can deliveries use an elevator to reach us?"),
    (
        "The office is the Bradfield Centre, desk 4.12, on Mondays and Thursdays.",
        "where do I sit on in-person work days?",
    ),
    ("The nearest 24-hour pharmacy is Boots at the railway station.", "where can I get medicine at midnight?"),
    ("Favourite café for working is Hot Numbers on Gwydir Street.", "where do I like to work outside the house?"),
    ("The gym is PureGym on Cherry Hinton Road.", "which fitness club am I a member of?"),
    (
        "Parking at the station costs £9 a day; the multi-storey is cheaper.",
        "how expensive is leaving the car by the trains?",
    ),
    ("The allotment is plot 23 on Nuffield Road; the water tap is by the shed.", "where is my vegetable patch?"),
    ("The Big Yellow storage unit C-118 holds the camping gear.", "where are the tents kept?"),
    # Accounts
    ("Email is hosted by Fastmail; the custom domain is registered at Gandi.", "who hosts my mailbox?"),
    ("The domain name renews each March and costs about £15.", "when does the website address need paying for?"),
    ("Logins are kept in Bitwarden; the family organisation includes Alex.", "where are passwords stored?"),
    ("The main bank account is with Monzo; savings sit in a Marcus account.", "which bank holds the everyday money?"),
    ("The pension is with Nest through the employer, contribution 8%.", "how much goes into retirement savings?"),
    ("Netflix is shared with Clara; Spotify is on a family plan.", "which TV service do I split with Clara?"),
    (
        "The GitHub account for personal projects is separate from the work one.",
        "do I use one code hosting login for everything?",
    ),
    (
        "Offsite copies of the NAS go to Backblaze B2, bucket home-nas-offsite.",
        "where is the cloud copy of the Synology?",
    ),
    ("Two-factor recovery codes are printed and kept in the fireproof box.", "where are the emergency sign-in codes?"),
    ("Council tax is paid by direct debit in ten monthly instalments.", "how is the local authority bill paid?"),
    ("The energy supplier is Octopus, on a fixed tariff until February.", "who supplies our electricity?"),
    # Health
    ("Allergic to penicillin: had a rash as a child.", "which antibiotic must never be prescribed?"),
    ("Takes 10 mg cetirizine in hay fever season, May to July.", "what do I take for pollen allergy?"),
    ("Blood pressure was 128/82 at the September check.", "what were my cardiovascular readings recently?"),
    ("Has mild asthma; the blue inhaler lives in the work bag.", "where is my reliever for breathing problems?"),
    ("Sleeps best with seven and a half hours; bedtime target is 22:45.", "what time should I turn in?"),
    (
        "Left knee hurts after runs over 15 km; the physio said to strengthen the glutes.",
        "what did the physiotherapist advise about my leg pain?",
    ),
    ("Glasses prescription is -2.25 left and -2.0 right, from Specsavers.", "how short-sighted am I?"),
    ("Takes a vitamin D supplement every day in winter.", "what should I take when it's dark all the time?"),
    ("Lactose intolerant, though small amounts of cheese are fine.", "can I have dairy?"),
    ("Flu jab booked for 12 October at the pharmacy.", "when is my influenza vaccination?"),
    ("Alex gets the flu jab through the hospital's staff clinic.", "where does Alex get vaccinated?"),
    ("Resting heart rate averages 54 bpm according to the watch.", "how slow is my pulse when I'm idle?"),
    # Agents' results
    (
        "Echo found that the Sunday backup job failed twice in November because the USB drive was unmounted.",
        "why did the weekly copy to the external disk break?",
    ),
    (
        "Seer measured that the home server idles at 11 watts and peaks at 38.",
        "what's the power consumption of the home server?",
    ),
    (
        "Seer measured that the NAS draws 32 watts with all disks spinning.",
        "what's the electricity usage of the Synology?",
    ),
    (
        "Echo found three subscriptions nobody uses: Audible, a VPN and a magazine app.",
        "which recurring payments can be cancelled?",
    ),
    (
        "Forge rebuilt the Home Assistant container and pinned it to version 2026.10.",
        "what release is the home automation stuck on?",
    ),
    ("Seer benchmarked the broadband: 72 Mbps down and 18 up in the evening.", "how fast is the internet at night?"),
    (
        "Echo found the cheapest flights to Tokyo leave on Tuesdays via Helsinki with Finnair.",
        "which day and route is best value for the Japan trip?",
    ),
    (
        "Helm decided to keep the daily digest under 200 words after long ones went unread.",
        "how long should the morning summary be?",
    ),
    ("Seer measured the fridge at 5°C, a degree warmer than recommended.", "is the refrigerator cold enough?"),
    (
        "Echo found the boiler was last serviced in January 2025, so it is overdue.",
        "when was the heating system last checked by an engineer?",
    ),
    (
        "Quill drafted the complaint to the energy company; it is waiting for approval.",
        "has the grievance to our power supplier been sent?",
    ),
    (
        "Seer estimated that solar panels would pay for themselves in 9 years.",
        "how long until rooftop PV earns its cost back?",
    ),
    (
        "Echo found the Wickes kitchen quote was £2,300 more than Howdens for the same units.",
        "which cabinet supplier was cheaper?",
    ),
    (
        "Forge found the test suite takes 7 minutes on the CI runner, mostly in the memory tests.",
        "why is continuous integration slow?",
    ),
    ("Seer measured that Biscuit's walks average 3.2 km a day.", "how far does the dog go each day?"),
    (
        "Echo found that Clara's flight lands at Stansted at 16:40 on 22 December.",
        "when do I pick Clara up from the airport?",
    ),
    (
        "Mace scanned the home network and found an unknown device; it was the smart plug in the hallway.",
        "what was the mystery gadget on the wifi?",
    ),
    (
        "Seer compared two half marathon plans and recommended the 12-week one with three runs a week.",
        "which training schedule for the race was suggested?",
    ),
    (
        "Seer measured that the bike commute takes 22 minutes and the bus 35.",
        "how long does getting to the office take?",
    ),
    ("Echo found the library books are due back on 9 December.", "when must I return the borrowed novels?"),
    (
        "Seer measured the home server's SSD at 71% wear and suggested replacing it next year.",
        "how worn out is the home server's disk?",
    ),
    ("Echo found that the energy bill rose 18% since the tariff change.", "how much more are we paying for power?"),
    ("The water meter read 1284 cubic metres on 1 November.", "what did the utility gauge show last month?"),
    # Project facts
    (
        "Timmy Time runs on Django 5.2 with SQLite in development and PostgreSQL in production.",
        "which databases does the app use?",
    ),
    ("Memory search uses all-MiniLM-L6-v2 embeddings with 384 dimensions.", "what model turns text into vectors?"),
    ("The swarm's agents are Echo, Seer, Forge, Quill, Helm and Mace.", "who are the members of the team of bots?"),
    ("Deployments happen on Friday mornings, only after the full test suite passes.", "when do releases go out?"),
    ("The local LLM is SmolLM2, served by the embedded model host.", "which language model runs on the machine?"),
    ("The events feed is delivered over websockets by Django Channels.", "how do live updates reach the browser?"),
    (
        "Upgrades need approval from a staff reviewer before the worker applies them.",
        "who must sign off before changes are installed?",
    ),
    ("The ledger records every agent's token spend per day.", "where can I see how much each bot cost?"),
    ("The production server is a Hetzner VPS in Falkenstein.", "where is the live site hosted?"),
    (
        "The production database is backed up nightly at 02:00 UTC to object storage.",
        "how often is the live data snapshotted?",
    ),
    ("The daily token budget for the whole swarm is 2 million.", "how much can the agents spend on the model per day?"),
    (
        "Quill handles writing tasks, Forge handles code and Seer does measurements.",
        "which agent should I give a programming job to?",
    ),
    ("Sandboxed tasks run with a 10-minute timeout and no network.", "how long can an isolated job run?"),
    ("The admin dashboard lives at /ops/ rather than /admin/.", "what's the URL for the operations console?"),
]

# The topic is in memory, the asked-for fact is not. Such a question rightly brings back the topical memories
# (the brother's number for the sister's): they are close in meaning, often closer than a right answer is to its
# question, so no similarity floor can or should hide them. A few are among UNANSWERABLE, so that its "quiet"
# figure still counts them; the rest are measured on their own (NEAR_MISSES), for information.
NEAR_MISSES: list[str] = [
    "what is Jonas's phone number?",
    "what's Clara's email address?",
    "what car does Clara drive?",
    "which vet does Biscuit go to?",
    "what is Biscuit's microchip number?",
    "when is the e-bike due for a service?",
    "when does the gas safety certificate expire?",
    "what is the Netflix password?",
    "what is Alex's blood type?",
    "when is Tom and Aisha's wedding anniversary?",
    "which hotel are we staying at in Kyoto?",
    "what time does the train to Edinburgh leave?",
    "how much did the 3D printer cost?",
    "what is the serial number of the Synology?",
    "when does the gym membership renew?",
    "what is the landlord's phone number?",
    "what was the last electricity meter reading?",
    "what is the staging server's IP address?",
    "which Python version does production run?",
    "what is Priya's surname?",
    "how many tokens did Forge use yesterday?",
]

UNANSWERABLE: list[str] = [
    # Near misses (see NEAR_MISSES).
    "what is my sister's phone number?",
    "when is my father's birthday?",
    "what is my cholesterol level?",
    "who is the plumber we use?",
    # Nothing in memory is about these.
    "what is the capital of Australia?",
    "how do I boil an egg?",
    "who won the 1966 World Cup?",
    "how many moons does Jupiter have?",
    "what's a good name for a sailing boat?",
    "how do you say thank you in Finnish?",
    "what is the square root of 169?",
    "who painted the Mona Lisa?",
    "what's the tallest mountain in Africa?",
    "how do I tie a bowline knot?",
    "what happens at the end of Hamlet?",
    "how long do tortoises live?",
    "what is quantum entanglement?",
    "which planet is closest to the sun?",
    "how do I make a sourdough starter?",
    "what is the population of Iceland?",
    "when was the Eiffel Tower built?",
    "what does haggis taste like?",
    "how do volcanoes form?",
    "what is the offside rule in football?",
    "how many bones are in the human hand?",
    "what's the difference between a crocodile and an alligator?",
    "who wrote Pride and Prejudice?",
    "how do I get red wine out of a carpet?",
    "what is the speed of light?",
    "why is the sky blue?",
    "how deep is the Mariana Trench?",
    "what are the rules of cricket?",
    "who invented the telephone?",
    "how do bees make honey?",
    "how many teaspoons are in a tablespoon?",
    "what is the chemical symbol for gold?",
    "how do I convert Celsius to Fahrenheit?",
    "who was the first person on the moon?",
    "what is the longest river in South America?",
    "how do I unblock a kitchen sink?",
    "what's the best way to learn chess openings?",
    "how many players are on a rugby team?",
    "what is photosynthesis?",
    "when did the Berlin Wall fall?",
    "how much does a blue whale weigh?",
    "what's a good recipe for pancakes?",
    "what does GDP stand for?",
    "how do I fold a fitted sheet?",
    "who discovered penicillin?",
    "what language is spoken in Brazil?",
    "what is the boiling point of water?",
    "how old is the universe?",
    "what is a haiku?",
    "how do I calculate compound interest?",
    "what year did the Titanic sink?",
    "why do cats purr?",
    "how many time zones does Russia have?",
    "what is the largest desert in the world?",
]

# Look-ups: the question is a name or a code from one fact, as a person types it into a search box. Paraphrase
# is what the questions of FACTS test; these test that a rare word found verbatim still brings its fact first
# (the evidence for FULL_MATCH_BOOST, apps.memory.services). Each fact is in FACTS, word for word.
LOOKUPS: list[tuple[str, str]] = [
    ("what is unit C-118 for?", "The Big Yellow storage unit C-118 holds the camping gear."),
    ("what does Rui do?", "Clara's partner Rui is a marine biologist."),
    ("Abyssinia", "Favourite cuisine is Ethiopian; the go-to restaurant is Abyssinia on Mill Road."),
    ("Hetzner", "The production server is a Hetzner VPS in Falkenstein."),
    ("Kobo", "Reads on a Kobo e-reader, not a Kindle."),
    ("Prusa MK4", "The 3D printer is a Prusa MK4 and uses PETG for outdoor parts."),
    ("Backblaze bucket", "Offsite copies of the NAS go to Backblaze B2, bucket home-nas-offsite."),
    ("Bill Evans", "Listens to jazz while working; Bill Evans is a favourite."),
    ("Aisha", "Tom is married to Aisha; they have twin boys, Leo and Sami."),
    ("PETG", "The 3D printer is a Prusa MK4 and uses PETG for outdoor parts."),
    ("Falkenstein", "The production server is a Hetzner VPS in Falkenstein."),
    ("Lily's Kitchen", "Biscuit is a three-year-old beagle who eats Lily's Kitchen."),
    ("DS920+", "The NAS is a Synology DS920+ with four 8 TB drives in SHR."),
    ("Mill Road", "Favourite cuisine is Ethiopian; the go-to restaurant is Abyssinia on Mill Road."),
    ("Leo and Sami", "Tom is married to Aisha; they have twin boys, Leo and Sami."),
]
