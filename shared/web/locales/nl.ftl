## Shared by every page
site-name = Custodian
skip-to-content = Naar de inhoud
language = Taal
sign-in = Aanmelden bij uw identiteitsprovider
sign-out = Afmelden
signed-in-as = Aangemeld als { $subject }
never = nooit
datetime = { $day } { $month } { $year }, { $time }
month-1 = januari
month-2 = februari
month-3 = maart
month-4 = april
month-5 = mei
month-6 = juni
month-7 = juli
month-8 = augustus
month-9 = september
month-10 = oktober
month-11 = november
month-12 = december
unavailable = Deze informatie is nu niet beschikbaar. Probeer het zo meteen opnieuw.
back-to-portal = Terug naar uw toestemmingen

## The person's portal
portal-title = Uw toestemmingen
portal-intro = Deze vertrouwde platformen mogen in uw naam optreden bij gezondheidsdiensten, omdat u daarvoor toestemming gaf. U kunt uw toestemming op elk moment intrekken.
portal-signed-out = Meld u aan om te zien welke platformen uw toestemming hebben en om ze in te trekken.
portal-none = Geen enkel platform heeft uw toestemming.
platform-unregistered = Dit platform staat niet in het register van vertrouwde platformen: de rechtspersoon erachter is onbekend.
platform-legal = { $name }, ondernemingsnummer { $number }
platform-may-access = Waartoe het toegang heeft
platform-assurance = Betrouwbaarheidsniveau
platform-assurance-unknown = niet vermeld
platform-consented = Toestemming gegeven
platform-last-acted = Laatst in uw naam opgetreden
platform-views = Apps die uw gegevens tonen
platform-views-none = geen geregistreerd
revoke = Toestemming intrekken
history-title = Beëindigde toestemmingen
history-none = Nog geen enkele toestemming van u is beëindigd.
history-ended = Beëindigd op { $when }
history-reason-revoked = U hebt ze ingetrokken
history-reason-expired = Beëindigd na een lange periode van inactiviteit
history-reason-incident = Beëindigd wegens een beveiligingsincident bij het platform
history-receipt = Bekijk wat er gedaan werd
history-no-receipt = Geen ontvangstbewijs

## Scopes, in plain words (a platform's registry entry may say more)
scope-openid = Wie u bent: uw identificatie bij de identiteitsprovider
scope-profile = Uw naam en basisprofiel
scope-email = Uw e-mailadres
scope-offline_access = In uw naam optreden terwijl u niet aangemeld bent
scope-unknown = Toegang genaamd “{ $name }”

## Confirmation
confirm-title = Uw toestemming aan { $platform } intrekken?
confirm-what = Als u ze intrekt:
confirm-tokens = wordt elke toegang die het platform voor u heeft bij uw identiteitsprovider meteen ingetrokken;
confirm-views = wist elke app van het platform de gegevens van u die ze in het geheugen heeft;
confirm-future = kan het platform niet langer in uw naam optreden, tot u opnieuw toestemming geeft.
confirm-receipt = U krijgt een ontvangstbewijs dat elke stap toont zodra ze uitgevoerd is.
confirm-submit = Ja, mijn toestemming intrekken
confirm-cancel = Nee, behouden

## Receipt
receipt-title = Ontvangstbewijs: toestemming aan { $platform } ingetrokken
receipt-pending = Bezig. Deze pagina werkt zichzelf bij tot elke stap uitgevoerd is.
receipt-done = Klaar. Elke stap hieronder is bevestigd.
receipt-asked = U hebt uw toestemming ingetrokken op { $time }.
receipt-asked-reason-expired = Uw toestemming eindigde na een lange periode van inactiviteit, op { $time }.
receipt-asked-reason-incident = Uw toestemming werd beëindigd wegens een beveiligingsincident bij het platform, op { $time }.
receipt-accepted = Uw verzoek is aanvaard; de kluis begint eraan.
receipt-token-line = { $what }: { $how }
receipt-token-access = Uw toegangstoken
receipt-token-refresh = Uw vernieuwingstoken (om op te treden terwijl u afgemeld bent)
receipt-token-revoked = ingetrokken bij de identiteitsprovider om { $time }
receipt-token-invalid = al niet meer geldig om { $time }: niets in te trekken
receipt-token-pending = wordt ingetrokken bij de identiteitsprovider
receipt-token-retrying = wordt ingetrokken: de identiteitsprovider heeft nog niet bevestigd (poging { $attempts })
receipt-view-acked = { $view } heeft uw gegevens gewist om { $time }, bevestigd
receipt-view-expired = { $view } hield uw gegevens enkel tot ze verliepen; dat was om { $time }
receipt-view-pending = { $view }: wacht op de bevestiging dat uw gegevens gewist zijn
receipt-no-views = Geen enkele app van dit platform had gegevens van u.
receipt-no-tokens = Het platform had geen token voor u.
receipt-finished = Elke stap uitgevoerd op { $time }.
receipt-refresh = Vernieuwen
receipt-id = Nummer van het ontvangstbewijs
receipt-not-found = Er is geen ontvangstbewijs met dit nummer voor u.

## The demo view
view-name = Demo-app
view-portal = Uw toestemmingen
view-title = Wat deze app van u bijhoudt
view-intro = Deze app toont gegevens die een vertrouwd platform voor u ophaalde. Ze houdt ze enkel in het geheugen, nooit langer dan het token waarmee ze opgehaald werden geldig is, en wist ze wanneer u uw toestemming intrekt.
view-signed-out = Meld u aan via het platform om uw gegevens hier te zien.
view-open = Mijn profiel in deze app ophalen
view-sessions = Uw gegevens in deze app
view-none = Deze app houdt niets van u bij.
view-session-opened = Opgehaald op { $time }
view-held-until = bijgehouden tot uiterlijk { $time }
view-state-held = in het geheugen
view-state-wiped = gewist: u hebt uw toestemming ingetrokken
view-state-expired = gewist: de tijd was om
view-show = Tonen
view-back = Terug naar de startpagina van deze app
view-data-title = Uw profiel, zoals deze app het bijhoudt
view-data-gone = Deze app houdt deze gegevens niet meer bij.
view-no-token = Het platform heeft geen geldige toestemming van u: er kan niets opgehaald worden.
view-failed = De gegevens konden niet opgehaald worden. Probeer het opnieuw.
view-forged = Dit formulier kwam niet van de pagina van deze app; herlaad ze en probeer opnieuw.
