// Azure AI Content Safety: the endpoint screens prompts and answers with it (src/chatft/content_safety.py), since
// managed online endpoints get no content filter of their own. Entra ID only: local auth (keys) is off, and the
// identity the endpoint runs as gets Cognitive Services User, the data-plane role text:analyze needs.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region. Content Safety is not offered in every region; eastus2 has it.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Principal (object) id of the user-assigned identity the chat endpoint runs as.')
param endpointPrincipalId string

// Account names are global: the same name is the custom subdomain that Entra ID token auth requires.
var accountName = take('cs-${baseName}-${uniqueString(resourceGroup().id)}', 64)
var cognitiveServicesUserRoleId = 'a97b65f3-24c7-4388-baec-2e87135dc908'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134: no VNet in this template; the endpoint reaches the account over its public endpoint, access is Entra ID RBAC only (README: network isolation)
  name: accountName
  location: location
  tags: tags
  kind: 'ContentSafety'
  sku: {
    name: 'S0'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    customSubDomainName: accountName
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource endpointCanAnalyze 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, endpointPrincipalId, cognitiveServicesUserRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesUserRoleId)
    principalId: endpointPrincipalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: the chat endpoint screens text with Content Safety'
  }
}

output id string = account.id
output name string = account.name
output endpoint string = account.properties.endpoint
