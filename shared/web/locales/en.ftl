## Shared by every page
site-name = Custodian
skip-to-content = Skip to the content
language = Language
sign-in = Sign in at your identity provider
sign-out = Sign out
signed-in-as = Signed in as { $subject }
never = never
datetime = { $day } { $month } { $year }, { $time }
month-1 = January
month-2 = February
month-3 = March
month-4 = April
month-5 = May
month-6 = June
month-7 = July
month-8 = August
month-9 = September
month-10 = October
month-11 = November
month-12 = December
unavailable = This information is unavailable right now. Please try again in a moment.
back-to-portal = Back to your consents

## The person's portal
portal-title = Your consents
portal-intro = These trusted platforms may act for you at health services, because you consented. You can withdraw your consent from any of them at any time.
portal-signed-out = Sign in to see which platforms hold your consent and to withdraw it.
portal-none = No platform holds your consent.
platform-unregistered = This platform is not in the registry of trusted platforms: its legal entity is unknown.
platform-legal = { $name }, enterprise number { $number }
platform-may-access = What it may access
platform-assurance = Level of assurance
platform-assurance-unknown = not stated
platform-consented = Consent given
platform-last-acted = Last acted for you
platform-views = Apps that show your data
platform-views-none = none registered
revoke = Withdraw consent
history-title = Ended consents
history-none = No consent of yours has ended yet.
history-ended = Ended on { $when }
history-reason-revoked = You withdrew it
history-reason-expired = Ended after a long period of inactivity
history-reason-incident = Ended because of a security incident at the platform
history-receipt = See what was done
history-no-receipt = No receipt

## Scopes, in plain words (a platform's registry entry may say more)
scope-openid = Who you are: your identifier at the identity provider
scope-profile = Your name and basic profile
scope-email = Your e-mail address
scope-offline_access = Act for you while you are not signed in
scope-unknown = Access named “{ $name }”

## Confirmation
confirm-title = Withdraw your consent from { $platform }?
confirm-what = If you withdraw it:
confirm-tokens = every access the platform holds for you at your identity provider is withdrawn at once;
confirm-views = every app of the platform erases the data of yours it holds in memory;
confirm-future = the platform can no longer act for you, until you consent again.
confirm-receipt = You will get a receipt that shows each of these steps as it is done.
confirm-submit = Yes, withdraw my consent
confirm-cancel = No, keep it

## Receipt
receipt-title = Receipt: consent of { $platform } withdrawn
receipt-pending = In progress. This page updates itself until every step is done.
receipt-done = Done. Every step below is confirmed.
receipt-asked = You withdrew your consent on { $time }.
receipt-asked-reason-expired = Your consent ended after a long period of inactivity, on { $time }.
receipt-asked-reason-incident = Your consent was ended because of a security incident at the platform, on { $time }.
receipt-accepted = Your request was accepted; the vault is starting on it.
receipt-token-line = { $what }: { $how }
receipt-token-access = Your access token
receipt-token-refresh = Your refresh token (for acting while you are signed out)
receipt-token-revoked = withdrawn at the identity provider at { $time }
receipt-token-invalid = already no longer valid at { $time }: nothing to withdraw
receipt-token-pending = being withdrawn at the identity provider
receipt-token-retrying = being withdrawn: the identity provider did not confirm yet (attempt { $attempts })
receipt-view-acked = { $view } erased your data at { $time }, confirmed
receipt-view-expired = { $view } held your data only until it expired; it ran out at { $time }
receipt-view-pending = { $view }: waiting for its confirmation that your data is erased
receipt-no-views = No app of this platform held data of yours.
receipt-no-tokens = The platform held no token for you.
receipt-finished = Every step done on { $time }.
receipt-refresh = Refresh
receipt-id = Receipt number
receipt-not-found = There is no receipt with this number for you.

## The demo view
view-name = Demo app
view-portal = Your consents
view-title = What this app holds of yours
view-intro = This app shows data a trusted platform fetched for you. It keeps it in memory only, never past the validity of the token that fetched it, and erases it when you withdraw your consent.
view-signed-out = Sign in through the platform to see your data here.
view-open = Fetch my profile into this app
view-sessions = Your data in this app
view-none = This app holds nothing of yours.
view-session-opened = Fetched on { $time }
view-held-until = kept until { $time } at the latest
view-state-held = held in memory
view-state-wiped = erased: you withdrew your consent
view-state-expired = erased: its time ran out
view-show = Show
view-back = Back to this app's start page
view-data-title = Your profile, as this app holds it
view-data-gone = This app no longer holds this data.
view-no-token = The platform holds no valid consent of yours: nothing can be fetched.
view-failed = The data could not be fetched. Please try again.
view-forged = This form did not come from this app's page; reload it and try again.
