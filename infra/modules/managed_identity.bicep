// A user-assigned identity: the one the compute clusters run jobs as, and the one the retraining function runs
// as. User-assigned (not system-assigned) so its role assignments exist before what uses it does and survive
// re-creating it.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('What runs as this identity; the name\'s last part (id-<baseName>-<purpose>).')
param purpose string = 'compute'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${baseName}-${purpose}'
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
